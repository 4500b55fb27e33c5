"""Optuna studies over static recipes, one trial = one full fine-tuning episode, in this process.

TPE (multivariate) with a median, Hyperband or no pruner, or random search (Optuna's
RandomSampler, no pruning). Validation loss is reported at every decision point so a pruner can
stop bad trials; pruned trials count the steps they ran. Studies live in SQLite and resume after a
crash without repeating finished trials. A resumed study's sampler is seeded from (seed, trials
already finished): a sampler re-created with the original seed would replay its first draws and
repeat trials it already ran.
"""
from __future__ import annotations

import zlib
from typing import Optional

import numpy as np
import optuna

from agents.baselines.search_space import suggest_recipe
from envs.episode import decisions, recipe_plan
from envs.finetune_env import FineTuneEnv

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


def objective_value(info: dict) -> float:
    """Validation loss, with diverged runs ranked last."""
    val = info["eval_loss"]
    return float(val) if not info["diverged"] and val == val else 1e9


def run_trial(trial: optuna.Trial, env: FineTuneEnv, instance: str, seed: int) -> float:
    """One episode under the trial's recipe; reports validation loss at each decision point."""
    plan = recipe_plan(env, suggest_recipe(trial, env.cfg.bounds, env.cfg.instance(instance)), instance)
    info: dict = {}
    for d in decisions(env, plan, instance, seed):
        info = d.info
        trial.set_user_attr("compute_steps", info["steps_done"])
        trial.report(objective_value(info), info["steps_done"])
        if not d.done and trial.should_prune():
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
    raise ValueError(f"unknown pruner {name!r}; choose one of {PRUNERS}")


def sampler_seed(seed: int, n_finished: int) -> int:
    """The seed itself for a new study; a distinct, reproducible one for each resume point."""
    return seed if n_finished == 0 else int(np.random.SeedSequence([seed, n_finished]).generate_state(1)[0])


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """Each kind draws from its own stream of the seed: TPE's random start-up trials must not be
    random search's first trials (with one shared seed they were, and small budgets tied)."""
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLERS}")
    kind_seed = int(np.random.SeedSequence([seed, zlib.crc32(kind.encode())]).generate_state(1)[0])
    if kind == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, seed=kind_seed, n_startup_trials=4)
    return optuna.samplers.RandomSampler(seed=kind_seed)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def run_study(env: FineTuneEnv, instance: str, seed: int, n_trials: int, storage: Optional[str], study_name: str,
              pruner: str = "median", sampler_seed_base: int = 0, show_progress: bool = True,
              sampler: str = "tpe") -> optuna.Study:
    """Create or resume a study and run it until it holds n_trials finished (complete or pruned) trials."""
    total = env.cfg.steps_for(env.cfg.instance(instance))
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, direction="minimize",
                                pruner=make_pruner(pruner, total, env.cfg.episode.decision_interval))
    done = len(finished_trials(study))
    study.sampler = make_sampler(sampler, sampler_seed(sampler_seed_base, done))
    if n_trials - done > 0:
        if not env.evaluate_test:
            raise ValueError("a search reports its selected run's test loss: build the environment with evaluate_test=True")
        study.optimize(lambda t: run_trial(t, env, instance, seed), n_trials=n_trials - done,
                       show_progress_bar=show_progress, catch=())
    return study


def compute_steps(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Training steps these trials actually spent, pruned ones included: the one place a search's
    compute is counted."""
    return sum(int(t.user_attrs.get("compute_steps", 0)) for t in trials)


def best_trial(study: optuna.Study, first_n: Optional[int] = None) -> Optional[optuna.trial.FrozenTrial]:
    """Best completed trial by validation loss, among the first n finished trials if given."""
    done = finished_trials(study)
    if first_n is not None:
        done = done[:first_n]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    return min(complete, key=lambda t: t.value) if complete else None
