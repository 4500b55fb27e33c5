#!/usr/bin/env bash
# Set up (once) and run the main job: learn a controller and report it on held-out instances.
# Extra arguments go to `python -m agents.train_agent` (try --help); given twice, the later wins.
# Two subprocess environments (and two held-out evaluation workers) use both cores of a 2-core VM,
# which keeps the whole job, setup included, within 15 minutes (README: "The main job"). The
# headline controller is a longer run on SmolLM2 (README).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m agents.train_agent --n-envs 2 --subproc "$@"
