"""Held-out evaluation: the learned policy against the default recipe and against no control.

    python -m agents.evaluate --agent results/agents/<name> [--seeds 3] [--workers 2]

Every held-out instance x seed runs three times on the same seeds (same batches and dropout):
with the policy (deterministic actions); with the default static recipe; and with no control
(``held_start``: the policy's own starting hyperparameters, drawn from the instance's range, held
fixed). The last separates what the policy's steering buys from what its starting point gives.
For a residual controller (``control.residual``), ``held_start`` is the recipe it corrects, run
as is, and three more runs test the rescue of a user's wrong start (the recipe's lr x 0.01..100,
drawn per instance and seed): the policy from that guess, the guess held, and a learning-rate
range test (``range_test``, counted at its real cost in steps).
Validation drives nothing here; the test split of each run is what is reported
(agents/experiments/heldout.py). Writes heldout.json / heldout.md (and a trajectory plot per
instance) into the agent folder, and logs them to MLflow. Runs are saved as they finish in the
agent folder's heldout_runs/: an interrupted evaluation resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from agents.experiments.runner import add_worker_arguments, pool_options
from trainers.cli import CommandParser, positive_int, run_command


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.evaluate", description=__doc__)
    p.add_argument("--agent", required=True, help="agent folder (results/agents/<name>)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per held-out instance (default: 3)")
    add_worker_arguments(p)
    p.add_argument("--baselines-from", default=None, metavar="AGENT_FOLDER",
                   help="reuse the runs no policy acts in (default recipe, held start; for a residual controller "
                        "the guess held and the range test) from another agent's evaluation on the same instance "
                        "set and seeds; only the policy runs")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under results/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return p


def evaluate(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict:
    from agents.experiments.heldout import evaluate_and_report, reusable_baselines
    from agents.learners.agent_folder import Controller
    from agents.reporting.mlflow_tracking import check_tracking_uri, tracked_run

    if not args.no_mlflow:
        check_tracking_uri(args.tracking_uri)
    folder = Path(args.agent)
    cfg = Controller(folder).env_config
    reused, extra = {}, {}
    if args.baselines_from:
        reused, extra["baselines_from"] = reusable_baselines(Path(args.baselines_from), cfg, args.seeds)
    command = "python -m agents.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])

    def run(log_to_mlflow: bool) -> dict:
        return evaluate_and_report(folder, args.seeds, command, pool_options(args), reused=reused, extra=extra,
                                   log_to_mlflow=log_to_mlflow)

    if args.no_mlflow:
        return run(False)
    with tracked_run(args.tracking_uri, "heldout-evaluation", f"evaluate/{folder.name}"):
        return run(True)


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), lambda args: evaluate(args, argv), argv)


if __name__ == "__main__":
    main()
