#!/usr/bin/env bash
# Install everything into .venv and run the test suite (unit, plugin, integration), then lint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/ruff check src tests
.venv/bin/mypy --strict src
# Integration tests use the local PostgreSQL when STRESSGUARD_DSN points at it, and the embedded
# one otherwise; both paths are exercised (tests/integration pick their own DSNs).
.venv/bin/python -m pytest -p no:cacheprovider -q -n 2 --dist loadgroup --timeout=600 "$@"
