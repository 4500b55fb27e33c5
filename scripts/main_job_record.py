"""Write results/main_job.json from a timed main job (scripts/time_main_job.sh calls this): the wall
and setup times it measured, and what the job's own held-out evaluation recorded (its machine, its
end time, the controller's steering and its paired difference from the default recipe).

    python scripts/main_job_record.py <agent folder> <commit> <wall seconds> <setup seconds>
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def record(folder: Path, commit: str, wall: int, setup: int) -> dict:
    summary = json.loads((folder / "heldout.json").read_text())["summary"]
    paired = summary["paired"]["default_recipe"]
    return {
        "command": "bash run.sh",
        "how": f"a fresh clone of commit {commit}, empty DSRL_HOME and DSRL_CACHE, pip's download cache off "
               "(bash scripts/time_main_job.sh)",
        "job": summary["command"],
        "commit": commit,
        "measured_at": summary["measured_at"],  # the end of the job's held-out evaluation
        "wall_seconds": wall,
        "setup_seconds": setup,
        "machine": dict(summary["machine"], git_commit=commit),
        "agent": f"results/agents/{folder.name}",
        "lr_contraction": summary.get("lr_contraction"),
        "n_instances": paired["n_instances"],
        "n_seeds": paired["n_seeds"],
        "policy_minus_default_recipe": paired["mean"],
        "policy_minus_default_recipe_ci95": [paired["ci95_low"], paired["ci95_high"]],
        "policy_minus_default_recipe_t_ci95": paired["t_ci95_over_instances"],
        "interval_method": paired["method"],
    }


if __name__ == "__main__":
    folder, commit, wall, setup = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    out = Path(__file__).resolve().parents[1] / "results" / "main_job.json"
    out.write_text(json.dumps(record(folder, commit, wall, setup), indent=2) + "\n")
    print(f"written: {out} ({wall} s in all, {setup} s setup)")
