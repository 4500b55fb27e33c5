"""Held-out evaluation: the learned policy against the default recipe and against no control.

    python -m agents.evaluate --agent results/agents/<name> [--seeds 3]

Every held-out instance x seed runs three times on the same seeds (same batches and dropout):
with the policy (deterministic actions); with the default static recipe; and with no control
(``initial_constant``: the policy's own starting hyperparameters, drawn from the instance's
range, held fixed). The last separates what the policy's steering buys from what its starting
point gives. Validation drives nothing here; the test split of each run is what is reported.
Writes heldout.json / heldout.md (and a trajectory plot per instance) into the agent folder, and
logs them to MLflow.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import ConfigError


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.evaluate", description=__doc__)
    p.add_argument("--agent", required=True, help="agent folder (results/agents/<name>)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per held-out instance (default: 3)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes, one engine each (default: 1); results are the same, in less time")
    p.add_argument("--baselines-from", default=None, metavar="AGENT_FOLDER",
                   help="reuse the default-recipe and no-control runs of another agent's evaluation on the same "
                        "instance set and seeds (they do not depend on the policy); only the policy runs")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under results/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return p


def evaluate(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict:
    from agents.evaluation.heldout import evaluate_heldout
    from agents.learners.agent_folder import Controller
    from agents.reporting import mlflow_tracking
    from agents.reporting.heldout_report import METHODS, heldout_markdown, write_heldout_report

    mlflow_tracking.check_tracking_uri(None if getattr(args, 'no_mlflow', False) else args.tracking_uri)
    controller = Controller(args.agent)
    if not controller.env_config.heldout:
        raise ConfigError(f"{Path(args.agent) / 'env_config.yaml'}: the agent's instance set has no held-out instances")
    command = "python -m agents.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    seeds = list(range(args.seeds))
    reused: dict = {}
    extra: dict = {}
    if args.baselines_from:
        from agents.evaluation.heldout import reusable_baselines

        reused, extra["baselines_from"] = reusable_baselines(Path(args.baselines_from), controller.env_config, seeds)
    methods = tuple(m for m in METHODS if m not in reused)
    if args.workers > 1:
        from agents.evaluation.heldout import evaluate_heldout_parallel

        runs = evaluate_heldout_parallel(str(args.agent), seeds, args.workers, methods)
    else:
        runs = evaluate_heldout(controller, seeds, methods=methods)
    runs = {m: reused.get(m) or runs[m] for m in METHODS}
    folder = Path(args.agent)
    if args.no_mlflow:
        summary = write_heldout_report(folder, runs, command, log_to_mlflow=False, extra=extra)
    else:
        import mlflow

        mlflow_tracking.setup(args.tracking_uri, "heldout-evaluation")
        with mlflow.start_run(run_name=f"evaluate/{folder.name}"):
            summary = write_heldout_report(folder, runs, command, extra=extra)
    print(heldout_markdown(summary, f"Held-out evaluation of {folder.name}", command))
    print(f"written: {folder / 'heldout.json'}, {folder / 'heldout.md'}")
    return summary


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), lambda args: evaluate(args, argv), argv)


if __name__ == "__main__":
    main()
