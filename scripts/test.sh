#!/usr/bin/env bash
# Install everything into .venv and run lint, mypy --strict and the test suite (unit, plugin,
# integration). Under CI (CI=true) also:
#   - a database is expected: a test that skips because PostgreSQL is unreachable fails;
#   - the unit and plugin tests run again on the oldest and newest supported Pythons (3.10 and
#     3.13, from pyenv or PATH), each in a venv of its own; a missing one fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/ruff check src tests
.venv/bin/mypy --strict src

if [ "${CI:-}" = "true" ]; then
  export STRESSGUARD_REQUIRE_DB=1
fi
# Integration tests use the local PostgreSQL when STRESSGUARD_DSN points at it, and the embedded
# one otherwise; both paths are exercised (tests/integration pick their own DSNs).
.venv/bin/python -m pytest -p no:cacheprovider -q -n 2 --dist loadgroup --timeout=600 "$@"

# The full main job (EXAMPLES_FULL=1 ... test_examples.py -k main_job) is not run here yet: on
# this machine's current service stack two of its SLAs sit at their limits (the CRUD peak's
# p95 200 ms, a soak's drift), so it fails by chance; scripts/examples.sh runs it.

find_python() {  # find_python 3.10 -> the path of a python3.10 that runs, or nothing
  local version=$1 candidate
  # a pyenv shim is on PATH even when that version is not selected: it must actually run
  for candidate in "$HOME"/.pyenv/versions/"$version"*/bin/python "python$version"; do
    if "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$version'.split('.')))" \
        >/dev/null 2>&1; then
      command -v "$candidate"
      return
    fi
  done
}

if [ "${CI:-}" = "true" ] && [ $# -eq 0 ]; then
  for version in 3.10 3.13; do
    python=$(find_python "$version")
    if [ -z "$python" ]; then
      echo "CI: Python $version is not installed: the supported range is not tested" >&2
      exit 1
    fi
    venv=".venv-$version"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[test]"
    echo "== unit and plugin tests on $("$venv/bin/python" --version)"
    "$venv/bin/python" -m pytest -p no:cacheprovider -q -n 2 --timeout=600 tests/unit tests/plugin
  done
fi
