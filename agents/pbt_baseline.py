"""PBT baseline on Ray Tune: a population of fine-tuning runs that copy the better members'
model + optimizer state (exploit) and perturb their hyperparameters (explore).

    python -m agents.pbt_baseline --instance bbc-tech-lm --population 4

The perturbation interval is the controller's decision interval, the mutations are the
controller's knobs, each member is a Ray Tune trial with declared resources ({"cpu": 1}, or
{"gpu": 1} on GPU machines), and compute is the training steps the members really ran
(agents/baselines/pbt.py).
"""
from __future__ import annotations

import argparse
import json
from typing import Optional

from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, load_config


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.pbt_baseline", description=__doc__)
    p.add_argument("--config", default="tiny", help="instance set (default: tiny)")
    p.add_argument("--instance", default=None, help="default: the first held-out instance")
    p.add_argument("--population", type=positive_int, default=4, help="members (default: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the members' checkpoints (model + optimizer at every decision) after every member "
                        "has finished; by default they are deleted then, and the reported results stay")
    return p


def population_based_training(args: argparse.Namespace) -> dict:
    from agents.baselines.pbt import run_pbt

    cfg = load_config(args.config)
    inst = cfg.pick_instance(args.instance)
    res = run_pbt(cfg, inst, args.seed, args.population, REPO_ROOT / "results" / "runs" / "pbt",
                  keep_checkpoints=args.keep_checkpoints)
    print(json.dumps({k: v for k, v in res.items() if k not in ("schedule_lr", "eval_curve")}, indent=2))
    return res


def main(argv: Optional[list[str]] = None) -> None:
    run_command(build_parser(), population_based_training, argv)


if __name__ == "__main__":
    main()
