#!/usr/bin/env bash
# Install everything into .venv and run the examples suite against the embedded demo service.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[examples]"
# 0.02 runs the production durations (a 2 h soak, 30 min archival, 3 min stress steps) in about
# 4 minutes here; STRESSGUARD_TIME_SCALE=1 runs them for real.
.venv/bin/python -m pytest -p no:cacheprovider examples \
  --stressguard-time-scale="${STRESSGUARD_TIME_SCALE:-0.02}" \
  --stressguard-gate "peak_rss<2GB" --stressguard-gate "failure_rate==0%" \
  --stressguard-json=stressguard-report.json "$@"
