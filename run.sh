#!/usr/bin/env bash
# Set up (once) and run the main job: learn a controller on the tiny instance set, then test it on
# held-out instances. PPO is first warm-started by imitating each training instance's best constant
# lr (results/headroom/tiny_lr_grid.json, from the command in its "command" field; training
# instances only), then learns 144 decisions (three PPO rollouts) from the reward in two subprocess
# environments; the held-out evaluation runs in two worker processes. Sized for the whole job, setup included, to stay
# well under 15 minutes on a 2-core VM (results/main_job.json has the measured time).
# Extra arguments go to `python -m agents.train_agent` (try --help); given twice, the later wins.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m agents.train_agent --n-envs 2 --subproc --imitate results/headroom/tiny_lr_grid.json \
  --decisions 144 --validate-every 0 --checkpoint-every 24 "$@"
