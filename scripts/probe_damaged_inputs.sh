#!/usr/bin/env bash
# Try the project as a user with damaged input would: corrupted agent folders and Q-tables,
# hostile YAML (deep nesting, alias bombs), odd JSONL, unreachable or unwritable tracking stores,
# unwritable or full output folders, two runs on one folder (real processes), Ctrl-C, damaged
# checkpoints, symlinks out of an agent folder. Each probe expects one `error:` line naming the
# file, field or value, exit status 2 (130 for Ctrl-C), in seconds, with nothing written or deleted.
#
#   bash scripts/probe_damaged_inputs.sh            # every probe (a few minutes on 2 cores)
#   bash scripts/probe_damaged_inputs.sh --quick    # leave out the probes that train (well under a minute)
#
# The probes are tests/test_damaged_inputs.py, each in a temporary folder. The probes that start
# processes bound their own waits; the whole run stops after 15 minutes, and a probe still running
# after 4 has its stack printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
select=()
if [ "${1:-}" = "--quick" ]; then
  select=(-k "not ctrl_c and not two_tune and not before_the_first_decision and not stopped_before and not learner_progress and not save_that_fails")
  shift
fi
exec timeout 900 .venv/bin/python -m pytest -q -p no:cacheprovider -o faulthandler_timeout=240 tests/test_damaged_inputs.py "${select[@]}" "$@"
