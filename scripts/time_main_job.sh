#!/usr/bin/env bash
# Times the README's main job as a new user meets it: a fresh clone of HEAD in a temporary folder,
# an empty venv home and artifact cache, pip's download cache off, then `bash run.sh`. Writes
# results/main_job.json (wall time, setup time, machine, commit, and the controller's held-out
# steering and gain read from the run's heldout.json), keeps the full log beside it, and copies the
# agent folder it learned to results/agents/<name>, then rewrites the README block and REPORT.md.
#
#   bash scripts/time_main_job.sh            # about 10 minutes on a 2-core VM
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
COMMIT=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain -- agents trainers envs configs scripts run.sh pyproject.toml results/headroom)" ]; then
  echo "note: the clone runs commit $COMMIT; uncommitted changes to the code are not in it" >&2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone -q "$REPO" "$WORK/clone"
export DSRL_HOME="$WORK/home" DSRL_CACHE="$WORK/cache" PIP_NO_CACHE_DIR=1
LOG="$WORK/run.log"
start=$(date +%s)
failed() {  # keep the log of a failed job before the temporary folder goes
  cp "$LOG" results/main_job.failed.log
  tail -n 20 "$LOG" >&2
  echo "error: the main job failed; its log is results/main_job.failed.log" >&2
  exit 1
}
(cd "$WORK/clone" && bash scripts/bootstrap.sh) > "$LOG" 2>&1 || failed
setup_done=$(date +%s)
# run.sh runs bootstrap again (now a no-op) and then the job; its own time is the job's.
(cd "$WORK/clone" && bash run.sh) >> "$LOG" 2>&1 || failed
end=$(date +%s)
tail -n 8 "$LOG"
NAME=$(grep -o 'agent folder: [^;]*' "$LOG" | tail -n 1 | sed 's/agent folder: //')
AGENT="results/agents/$(basename "$NAME")"
mkdir -p results/agents
rm -rf "$AGENT.new"  # a leftover of an interrupted earlier copy
cp -r "$NAME" "$AGENT.new"  # the committed agent is replaced only once the copy is whole
rm -rf "$AGENT" && mv "$AGENT.new" "$AGENT"
cp "$LOG" results/main_job.log
"$PY" scripts/main_job_record.py "$AGENT" "$COMMIT" $((end - start)) $((setup_done - start))
# the README's main-job block and results/REPORT.md quote main_job.json: rewrite them with it
"$WORK/clone/.venv/bin/python" -m agents.report --results results --readme README.md
