"""The learned controller against searches, PBT, self-tuning optimizers and recipes, at matched compute.

    python -m agents.compare --agent results/agents/ppo-tiny-seed0 [--budgets 1 4 8 16] [--seeds 3] [--workers 2]
    python -m agents.compare --agent <folder> --data mine.jsonl [--model <hf folder>] [--steps N]

For every held-out instance and seed, every method of agents/methods/ runs (policy, default and
hand recipes, the transferred recipe, random search and TPE at each budget, the self-tuning
optimizers, PBT); compute is counted in training steps actually run. Searches select by
validation loss; what is reported is the test loss of the selected run
(agents/experiments/matched_compute.py). Outputs in results/compare/<name>/: summary.md/csv/json
and PNG plots; one MLflow run with a nested run per method. Each method's runs on an instance x
seed are saved as they finish: rerun the same command after a crash and it carries on (an agent
trained further is compared afresh, the searches read back).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from agents.experiments.runner import add_worker_arguments, pool_options
from trainers.cli import CommandParser, nonnegative_int, plain_name, positive_int, run_command
from trainers.config import REPO_ROOT, ConfigError


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.compare", description=__doc__)
    p.add_argument("--agent", required=True, help="agent folder (results/agents/<name>)")
    p.add_argument("--instances", nargs="*", default=None, help="instance names (default: the held-out set)")
    p.add_argument("--data", help="compare on your JSONL file of {\"prompt\",\"completion\"} or {\"text\"} records "
                                  "instead (as agents.tune --data)")
    p.add_argument("--model", help="a Hugging Face model folder, or a preset (tiny-gpt, smollm2-135m)")
    p.add_argument("--steps", type=positive_int, help="training steps of each run on --data (default: the episode's)")
    p.add_argument("--budgets", nargs="+", type=positive_int, default=[1, 4, 8, 16], help="search budgets in runs")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per instance (default: 3)")
    p.add_argument("--pbt-populations", nargs="*", type=positive_int, default=[4],
                   help="PBT population sizes to run on Ray Tune (default: 4; none to skip PBT)")
    p.add_argument("--transfer-trials", type=nonnegative_int, default=16,
                   help="Optuna trials tuning the transferred recipe on the training instances (0: leave it out; "
                        "default 16)")
    add_worker_arguments(p)
    p.add_argument("--name", type=plain_name, default=None, help="output folder name (default: the agent's name)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "compare"), help="parent folder (default: results/compare)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under results/)")
    return p


def options(args: argparse.Namespace, argv: Optional[list[str]]):
    """Every check, before anything runs or is written."""
    from agents.experiments.matched_compute import ComparisonOptions
    from agents.learners.agent_folder import Controller
    from agents.reporting.mlflow_tracking import check_tracking_uri
    from envs.control import action_map_for
    from trainers.models import model_path
    from trainers.retarget import with_model, with_set_ranges, with_user_data

    check_tracking_uri(args.tracking_uri)
    from trainers.models import check_model_limits
    controller = Controller(args.agent)
    cfg = controller.env_config
    if args.model:
        model_path(args.model)  # a folder that is not a model stops here, before any data or engine
    instances = args.instances
    if args.data:  # the user's file becomes the one held-out instance, as in agents.tune --data
        cfg = with_set_ranges(with_user_data(cfg, args.data, args.model, args.steps))
        instances = instances or [cfg.heldout[-1].name]
    elif args.model:
        cfg = with_model(cfg, args.model)
    names = list(dict.fromkeys(instances or [i.name for i in cfg.heldout]))  # a name given twice runs once
    if not names:
        raise ConfigError(f"{Path(args.agent) / 'env_config.yaml'}: no held-out instances to compare on; "
                          "name some with --instances")
    for n in names:
        cfg.instance(n)
    controller.check_compatible(action_map_for(cfg))
    check_model_limits(cfg.session)
    default_name = Path(args.agent).name + (f"-on-{Path(args.data).stem}" if args.data else "")
    return ComparisonOptions(
        agent=str(Path(args.agent).resolve()), cfg=cfg, instances=names,
        out=Path(args.out) / (args.name or default_name), seeds=args.seeds, budgets=tuple(args.budgets),
        pbt_populations=tuple(args.pbt_populations), transfer_trials=args.transfer_trials, pool=pool_options(args),
        command="python -m agents.compare " + " ".join(argv if argv is not None else sys.argv[1:]),
        tracking_uri=args.tracking_uri)


def compare(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict:
    from agents.experiments.matched_compute import compare as run_comparison

    opts = options(args, argv)
    summary = run_comparison(opts)
    print((opts.out / "summary.md").read_text())
    print(f"written to {opts.out}; the headline plot: {opts.out / 'gain_vs_compute.png'}")
    return summary


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), lambda args: compare(args, argv), argv)


if __name__ == "__main__":
    main()
