#!/usr/bin/env bash
# Set up (once) and run the main job: learn a controller and report it on held-out instances.
# Extra arguments go to `python -m agents.train_agent` (try --help); given twice, the later wins.
# 384 decisions and a held-out validation every 128 keep the whole job within 15 minutes on a
# 2-core VM (README: "The main job"); the headline controller is a longer run (README).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m agents.train_agent --total-steps 384 --validate-every 128 "$@"
