#!/usr/bin/env bash
# Times the README's main job as a new user meets it: a fresh clone of HEAD in a temporary folder,
# an empty venv home and artifact cache, pip's download cache off, then `bash run.sh`. Writes
# results/main_job.json (wall time, setup time, machine, commit, and the controller's held-out
# steering and gain read from the run's heldout.json), keeps the full log beside it, and copies the
# agent folder it learned to results/agents/<name>. Then run `python -m agents.report`.
#
#   bash scripts/time_main_job.sh            # about 10 minutes on a 2-core VM
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
COMMIT=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain -- agents trainers envs configs scripts run.sh)" ]; then
  echo "note: the clone runs commit $COMMIT; uncommitted changes to the code are not in it" >&2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$REPO" "$WORK/clone"
export DSRL_HOME="$WORK/home" DSRL_CACHE="$WORK/cache" PIP_NO_CACHE_DIR=1
LOG="$WORK/run.log"
start=$(date +%s)
(cd "$WORK/clone" && bash scripts/bootstrap.sh) > "$LOG" 2>&1
setup_done=$(date +%s)
# run.sh runs bootstrap again (now a no-op) and then the job; its own time is the job's.
(cd "$WORK/clone" && bash run.sh) >> "$LOG" 2>&1
end=$(date +%s)
tail -n 8 "$LOG"
NAME=$(grep -o 'agent folder: [^;]*' "$LOG" | tail -n 1 | sed 's/agent folder: //')
mkdir -p results/agents
rm -rf "results/agents/$(basename "$NAME")"
cp -r "$NAME" "results/agents/$(basename "$NAME")"
cp "$LOG" results/main_job.log
"$PY" - "$NAME" "$COMMIT" $((end - start)) $((setup_done - start)) <<'EOF'
import json, os, platform, sys, time
from pathlib import Path
folder, commit, wall, setup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
summary = json.loads((Path(folder) / "heldout.json").read_text())["summary"]
out = {
    "command": "bash run.sh (fresh clone, empty DSRL_HOME and DSRL_CACHE, PIP_NO_CACHE_DIR=1; scripts/time_main_job.sh)",
    "job": summary["command"],
    "commit": commit,
    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "wall_seconds": wall, "setup_seconds": setup,
    "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cuda": None,
                "git_commit": commit, "loadavg_1_5_15min": [round(x, 2) for x in os.getloadavg()]},
    "agent": f"results/agents/{Path(folder).name}",
    "lr_contraction": summary.get("lr_contraction"),
    "policy_minus_default_recipe": summary["paired"]["default_recipe"]["mean"],
    "policy_minus_default_recipe_ci95": [summary["paired"]["default_recipe"]["ci95_low"],
                                         summary["paired"]["default_recipe"]["ci95_high"]],
}
Path("results/main_job.json").write_text(json.dumps(out, indent=2) + "\n")
print(f"written: results/main_job.json ({wall} s in all, {setup} s setup)")
EOF
