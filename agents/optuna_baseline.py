"""Optuna baseline: TPE over a static recipe, one trial = one full fine-tuning episode.

    python -m agents.optuna_baseline --instance bbc-tech-lm --trials 16
    python -m agents.optuna_baseline --instance bbc-tech-lm --trials 16 --pruner hyperband
    python -m agents.optuna_baseline --instance bbc-tech-lm --trials 16 --ray --pruner asha

The space is the controller's knobs frozen for the run (lr, weight decay, clipping threshold)
plus warmup fraction and decay shape. Validation loss is reported at every decision point so a
pruner can stop bad trials; pruned trials count the steps they ran. The study lives in SQLite
under results/optuna/ and resumes after a crash without repeating finished trials
(optuna-dashboard sqlite:///results/optuna/<study>.db opens it). With --ray the trials are Ray Tune
trials instead (OptunaSearch, ASHA early stopping; see agents/ray_search.py), one declared CPU or
GPU each.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator, Optional

import optuna

from envs.finetune_env import FineTuneEnv
from trainers.config import REPO_ROOT, RecipeConfig, load_config
from trainers.schedules import recipe_schedule

STUDY_DIR = REPO_ROOT / "results" / "optuna"


def suggest_recipe(trial: optuna.Trial, env: FineTuneEnv) -> RecipeConfig:
    b = env.cfg.bounds
    return RecipeConfig(
        lr=trial.suggest_float("lr", b.lr[0], b.lr[1], log=True),
        weight_decay=trial.suggest_float("weight_decay", b.weight_decay[0], b.weight_decay[1], log=True),
        grad_clip=trial.suggest_float("grad_clip", b.grad_clip[0], b.grad_clip[1], log=True),
        warmup_fraction=trial.suggest_float("warmup_fraction", 0.0, 0.3),
        decay=trial.suggest_categorical("decay", ["constant", "linear", "cosine"]),
    )


def recipe_episode(env: FineTuneEnv, recipe: RecipeConfig, instance: str, seed: int) -> Iterator[dict]:
    """One episode under a static recipe; yields the step info at every decision point, so a
    pruner (Optuna's or Ray Tune's ASHA) can look at the validation loss and stop it."""
    total = env.cfg.steps_for(env.cfg.instance(instance))
    schedule = recipe_schedule(recipe, total, min_lr=env.cfg.bounds.lr[0])
    env.reset(seed=seed, options={"instance": instance, "initial_hparams": schedule[0]})
    k = env.cfg.episode.decision_interval
    done, i = False, 0
    while not done:
        _, _, term, trunc, info = env.step_with_schedule(schedule[i : i + k])
        i += k
        done = term or trunc
        yield info


def objective_value(info: dict) -> float:
    """Validation loss, with diverged runs ranked last."""
    val = info["eval_loss"]
    return float(val) if not info["diverged"] and val == val else 1e9


def run_trial(trial: optuna.Trial, env: FineTuneEnv, instance: str, seed: int) -> float:
    """One episode under the trial's recipe; reports validation loss at each decision point."""
    info: dict = {}
    for info in recipe_episode(env, suggest_recipe(trial, env), instance, seed):
        trial.set_user_attr("compute_steps", info["steps_done"])
        trial.report(objective_value(info), info["steps_done"])
        if "episode_log" not in info and trial.should_prune():
            raise optuna.TrialPruned()
    log = info["episode_log"]
    trial.set_user_attr("test_loss", log["test_loss"])
    trial.set_user_attr("test_metric", log["test_metric"])
    trial.set_user_attr("schedule_lr", [h["lr"] for h in log["schedule"]])
    trial.set_user_attr("eval_curve", log["eval_curve"])
    return objective_value(info)


def make_pruner(name: str, total_steps: int, interval: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=interval, interval_steps=interval)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=interval, max_resource=total_steps, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose median, hyperband or none")


def run_study(env: FineTuneEnv, instance: str, seed: int, n_trials: int, storage: Optional[str], study_name: str,
              pruner: str = "median", sampler_seed: int = 0, show_progress: bool = True) -> optuna.Study:
    """Create or resume a study and run it until it holds n_trials finished (complete or pruned) trials."""
    total = env.cfg.steps_for(env.cfg.instance(instance))
    study = optuna.create_study(
        study_name=study_name, storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(multivariate=True, seed=sampler_seed, n_startup_trials=4),
        pruner=make_pruner(pruner, total, env.cfg.episode.decision_interval),
    )
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    remaining = n_trials - len(finished)
    if remaining > 0:
        env.evaluate_test = True
        study.optimize(lambda t: run_trial(t, env, instance, seed), n_trials=remaining,
                       show_progress_bar=show_progress, catch=())
    return study


def compute_steps(study: optuna.Study) -> int:
    """Training steps the study actually spent, pruned trials included."""
    return sum(int(t.user_attrs.get("compute_steps", 0)) for t in study.trials
               if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def best_trial(study: optuna.Study, first_n: Optional[int] = None) -> Optional[optuna.trial.FrozenTrial]:
    """Best completed trial by validation loss, among the first n finished trials if given."""
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    if first_n is not None:
        done = done[:first_n]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    return min(complete, key=lambda t: t.value) if complete else None


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m agents.optuna_baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="instance set (default: tiny)")
    p.add_argument("--instance", default=None, help="instance to tune (default: the first held-out one)")
    p.add_argument("--trials", type=int, default=16, help="finished trials wanted (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="episode seed and sampler seed (default: 0)")
    p.add_argument("--pruner", choices=["median", "hyperband", "asha", "none"], default=None,
                   help="early stopping (default: median in-process, asha with --ray)")
    p.add_argument("--ray", action="store_true", help="run the trials as Ray Tune trials (OptunaSearch)")
    p.add_argument("--study-name", default=None, help="default: <config>-<instance>-seed<seed>-<pruner>")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite under results/optuna/)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    instance = args.instance or cfg.heldout[0].name
    cfg.instance(instance)
    if args.ray:
        import json

        from agents.ray_search import run_search

        if args.pruner not in (None, "asha", "none"):
            p.error(f"--ray supports --pruner asha or none, not {args.pruner}")
        res = run_search(cfg, instance, args.seed, args.trials, REPO_ROOT / "results" / "runs" / "ray_search",
                         args.pruner or "asha")
        print(json.dumps({k: v for k, v in res.items() if k != "schedule_lr"}, indent=2))
        return
    args.pruner = args.pruner or "median"
    if args.pruner == "asha":
        p.error("--pruner asha needs --ray (ASHA is Ray Tune's scheduler)")
    name = args.study_name or f"{cfg.name}-{instance}-seed{args.seed}-{args.pruner}"
    STUDY_DIR.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{STUDY_DIR / (name + '.db')}"
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    study = run_study(env, instance, args.seed, args.trials, storage, name, args.pruner, args.seed)
    best = best_trial(study)
    print(f"study {name}: {len(study.trials)} trials, {compute_steps(study)} training steps")
    if best:
        print(f"best validation loss {best.value:.4f} with {best.params}; its test loss {best.user_attrs['test_loss']:.4f}")
    print(f"storage: {storage}  (optuna-dashboard {storage})")


if __name__ == "__main__":
    main()
