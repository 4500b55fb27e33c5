"""The Optuna baseline with its trials scheduled by Ray Tune: OptunaSearch (multivariate TPE) over
the same static-recipe space, ASHA as the early-stopping option, one declared resource per trial.

    python -m agents.ray_search --instance bbc-tech-lm --trials 16 --scheduler asha

Each trial is a Ray Tune function trainable that runs one episode through the same session code
as every other method (`recipe_episode`), reporting validation loss at every decision point.
Compute is the training steps trials actually ran, early-stopped ones included.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional

from trainers.config import REPO_ROOT, InstanceSetConfig, RecipeConfig, load_config

DECAYS = ["constant", "linear", "cosine"]


def recipe_trainable(config: dict[str, Any], cfg_dict: dict, instance: str, seed: int) -> None:
    """One Ray Tune trial: one fine-tuning episode under the sampled recipe."""
    from ray import tune

    from agents.optuna_baseline import objective_value, recipe_episode
    from envs.finetune_env import FineTuneEnv
    from trainers.config import parse_config

    env = FineTuneEnv(parse_config(cfg_dict), split="all", evaluate_test=True)
    recipe = RecipeConfig(**{k: config[k] for k in ("lr", "weight_decay", "grad_clip", "warmup_fraction", "decay")})
    for info in recipe_episode(env, recipe, instance, seed):
        metrics = {"eval_loss": objective_value(info), "steps_done": info["steps_done"]}
        if "episode_log" in info:
            metrics["test_loss"] = info["test_loss"]
            metrics["schedule_lr"] = json.dumps([h["lr"] for h in info["episode_log"]["schedule"]])
        tune.report(metrics)


def run_search(cfg: InstanceSetConfig, instance: str, seed: int, n_trials: int, storage: Path,
               scheduler: str = "asha", resources: Optional[dict] = None) -> dict[str, Any]:
    """Returns the best completed trial by validation loss, its test loss, and the compute spent."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from agents.ray_vec_env import init_ray

    if scheduler not in ("asha", "none"):
        raise ValueError(f"unknown scheduler {scheduler!r}; choose asha or none")
    started = init_ray()
    try:
        b = cfg.bounds
        total = cfg.steps_for(cfg.instance(instance))
        interval = cfg.episode.decision_interval
        resources = resources or ({"gpu": 1, "cpu": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"cpu": 1})
        space = {"lr": tune.loguniform(*b.lr), "weight_decay": tune.loguniform(*b.weight_decay),
                 "grad_clip": tune.loguniform(*b.grad_clip), "warmup_fraction": tune.uniform(0.0, 0.3),
                 "decay": tune.choice(DECAYS)}
        search = OptunaSearch(sampler=optuna.samplers.TPESampler(multivariate=True, seed=seed, n_startup_trials=4),
                              metric="eval_loss", mode="min")
        sched = (ASHAScheduler(time_attr="steps_done", max_t=total, grace_period=interval, reduction_factor=3)
                 if scheduler == "asha" else FIFOScheduler())
        trainable = tune.with_parameters(recipe_trainable, cfg_dict=cfg.model_dump(mode="json"),
                                         instance=instance, seed=seed)
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=space,
            tune_config=tune.TuneConfig(search_alg=search, scheduler=sched, num_samples=n_trials,
                                        metric="eval_loss", mode="min"),
            run_config=tune.RunConfig(name=f"search-{instance}-seed{seed}-{scheduler}",
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


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m agents.ray_search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="instance set (default: tiny)")
    p.add_argument("--instance", default=None, help="default: the first held-out instance")
    p.add_argument("--trials", type=int, default=16, help="trials (default: 16)")
    p.add_argument("--scheduler", choices=["asha", "none"], default="asha", help="early stopping (default: asha)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    inst = args.instance or cfg.heldout[0].name
    cfg.instance(inst)
    res = run_search(cfg, inst, args.seed, args.trials, REPO_ROOT / "results" / "runs" / "ray_search", args.scheduler)
    print(json.dumps({k: v for k, v in res.items() if k != "schedule_lr"}, indent=2))


if __name__ == "__main__":
    main()
