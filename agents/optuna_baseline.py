"""Optuna baseline: TPE over a static recipe, one trial = one full fine-tuning episode.

    python -m agents.optuna_baseline --instance bbc-tech-lm --trials 16
    python -m agents.optuna_baseline --instance bbc-tech-lm --trials 16 --pruner hyperband
    python -m agents.optuna_baseline --instance bbc-tech-lm --trials 16 --ray --pruner asha

The space is the controller's knobs frozen for the run (lr, weight decay, clipping threshold)
plus warmup fraction and decay shape (agents/baselines/search_space.py). Validation loss is
reported at every decision point so a pruner can stop bad trials; pruned trials count the steps
they ran. The study lives in SQLite under results/optuna/ and resumes after a crash without
repeating finished trials (optuna-dashboard sqlite:///results/optuna/<study>.db opens it). With
--ray the trials are Ray Tune trials instead (OptunaSearch, ASHA early stopping), one declared CPU
or GPU each.
"""
from __future__ import annotations

import argparse
import json
from typing import Optional

from trainers.cli import CommandParser, plain_name, positive_int, run_command
from trainers.config import REPO_ROOT, ConfigError, load_config

STUDY_DIR = REPO_ROOT / "results" / "optuna"


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.optuna_baseline", description=__doc__)
    p.add_argument("--config", default="tiny", help="instance set (default: tiny)")
    p.add_argument("--instance", default=None, help="instance to tune (default: the first held-out one)")
    p.add_argument("--trials", type=positive_int, default=16, help="finished trials wanted (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="episode seed and sampler seed (default: 0)")
    p.add_argument("--pruner", choices=["median", "hyperband", "asha", "none"], default=None,
                   help="early stopping (default: median in-process, asha with --ray)")
    p.add_argument("--ray", action="store_true", help="run the trials as Ray Tune trials (OptunaSearch)")
    p.add_argument("--study-name", type=plain_name, default=None, help="default: <config>-<instance>-seed<seed>-<pruner>")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite under results/optuna/)")
    return p


def search(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    instance = cfg.pick_instance(args.instance)
    if args.ray:
        if args.pruner not in (None, "asha", "none"):
            raise ConfigError(f"--ray supports --pruner asha or none, not {args.pruner}")
        from agents.baselines.ray_tune_search import run_search

        res = run_search(cfg, instance, args.seed, args.trials, REPO_ROOT / "results" / "runs" / "ray_search",
                         args.pruner or "asha")
        print(json.dumps({k: v for k, v in res.items() if k != "schedule_lr"}, indent=2))
        return
    pruner = args.pruner or "median"
    if pruner == "asha":
        raise ConfigError("--pruner asha needs --ray (ASHA is Ray Tune's scheduler)")
    from agents.baselines.optuna_search import best_trial, compute_steps, finished_trials, run_study
    from envs.finetune_env import FineTuneEnv

    name = args.study_name or f"{cfg.name}-{instance}-seed{args.seed}-{pruner}"
    STUDY_DIR.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{STUDY_DIR / (name + '.db')}"
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    study = run_study(env, instance, args.seed, args.trials, storage, name, pruner, args.seed)
    best = best_trial(study)
    print(f"study {name}: {len(study.trials)} trials, {compute_steps(finished_trials(study))} training steps")
    if best:
        print(f"best validation loss {best.value:.4f} with {best.params}; its test loss {best.user_attrs['test_loss']:.4f}")
    print(f"storage: {storage}  (optuna-dashboard {storage})")


def main(argv: Optional[list[str]] = None) -> None:
    run_command(build_parser(), search, argv)


if __name__ == "__main__":
    main()
