#!/usr/bin/env bash
# Set up (once) and run the main job: learn a controller and report it on held-out instances.
# Extra arguments go to `python -m agents.train_agent` (try --help).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m agents.train_agent "$@"
