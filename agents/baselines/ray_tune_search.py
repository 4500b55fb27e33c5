"""The Optuna search with its trials scheduled by Ray Tune: OptunaSearch (multivariate TPE) over
the same recipe space, ASHA as the early-stopping option, one declared resource per trial.

Each trial is a Ray Tune function trainable that runs one episode through the shared episode loop,
reporting validation loss at every decision point. Compute is the training steps trials actually
ran, early-stopped ones included.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from agents.baselines.optuna_search import objective_value
from agents.baselines.search_space import recipe_from, recipe_space, tune_space
from trainers.config import InstanceSetConfig

SCHEDULERS = ("asha", "none")


def recipe_trainable(config: dict[str, Any], cfg_dict: dict, instance: str, seed: int) -> None:
    """One Ray Tune trial: one fine-tuning episode under the sampled recipe."""
    from ray import tune

    from envs.episode import decisions, recipe_plan
    from envs.finetune_env import FineTuneEnv
    from trainers.config import parse_config

    env = FineTuneEnv(parse_config(cfg_dict), split="all", evaluate_test=True)
    for d in decisions(env, recipe_plan(env, recipe_from(config), instance), instance, seed):
        metrics = {"eval_loss": objective_value(d.info), "steps_done": d.info["steps_done"]}
        if "episode_log" in d.info:
            metrics["test_loss"] = d.info["test_loss"]
            metrics["schedule_lr"] = json.dumps([h["lr"] for h in d.info["episode_log"]["schedule"]])
        tune.report(metrics)


def run_search(cfg: InstanceSetConfig, instance: str, seed: int, n_trials: int, storage: Path,
               scheduler: str = "asha", resources: Optional[dict] = None) -> dict[str, Any]:
    """Returns the best completed trial by validation loss, its test loss, and the compute spent."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from agents.parallel.ray_cluster import init_ray, trial_resources

    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
    started = init_ray()
    try:
        total = cfg.steps_for(cfg.instance(instance))
        interval = cfg.episode.decision_interval
        space = tune_space(recipe_space(cfg.bounds, cfg.instance(instance)))
        search = OptunaSearch(sampler=optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=4),
                              metric="eval_loss", mode="min")
        sched = (ASHAScheduler(time_attr="steps_done", max_t=total, grace_period=interval, reduction_factor=3)
                 if scheduler == "asha" else FIFOScheduler())
        trainable = tune.with_parameters(recipe_trainable, cfg_dict=cfg.model_dump(mode="json"),
                                         instance=instance, seed=seed)
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources or trial_resources()),
            param_space=space,
            tune_config=tune.TuneConfig(search_alg=search, scheduler=sched, num_samples=n_trials,
                                        metric="eval_loss", mode="min"),
            run_config=tune.RunConfig(name=f"search-{instance}-seed{seed}-{scheduler}-n{n_trials}",
                                      storage_path=str(storage.resolve()), verbose=0),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    trials = [dict(r.metrics, config=r.config) for r in results if r.metrics]
    complete = [m for m in trials if m.get("steps_done") == total and math.isfinite(m.get("test_loss", math.nan))]
    out: dict[str, Any] = {"trials": len(trials), "complete": len(complete),
                           "compute_steps": sum(int(m.get("steps_done", 0)) for m in trials)}
    if complete:
        best = min(complete, key=lambda m: m["eval_loss"])
        out.update(val_loss=best["eval_loss"], test_loss=best["test_loss"],
                   params={k: best["config"][k] for k in space}, schedule_lr=json.loads(best["schedule_lr"]))
    else:
        out.update(val_loss=math.nan, test_loss=math.nan, params=None)
    return out
