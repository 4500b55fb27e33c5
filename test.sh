#!/usr/bin/env bash
# Set up (once) and run the test suite, in two processes (pytest-xdist; tests that must not run
# beside each other share an xdist_group). Extra arguments go to pytest: `bash test.sh -n 0` runs
# it in one process, `bash test.sh tests/test_env.py` one file. The 15 slowest tests are listed at the end.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -n "${DSRL_TEST_WORKERS:-2}" --dist loadgroup --durations=15 "$@"
