"""The "learned once" static rival: one recipe tuned by Optuna on the training instances, then
applied unchanged to every held-out instance.

The objective is the mean normalised validation improvement over the training instances,
(initial eval loss - final eval loss) / initial eval loss per instance (a diverged run counts as
-1), so a classification instance at loss 1 and a language-modelling one at loss 6 weigh alike.
Each trial's episodes are spread over the pool's workers. The tuning is paid once, like the
controller's training: its cost is reported apart from the per-instance compute. The study is
stored in SQLite, named by the training instances, the trial count and the seed, so rerunning the
same command resumes it where it stopped (another --transfer-trials tunes a study of its own); the
result is saved in the store under that key.
"""
from __future__ import annotations

import math
from typing import Any

from agents.baselines.optuna_search import compute_steps, finished_trials, make_sampler, sampler_seed
from agents.baselines.search_space import suggest_recipe
from agents.experiments.runner import RecordStore, WorkerPool
from agents.methods.base import MethodContext, digest, instance_key
from envs.episode import recipe_plan, run_episode
from trainers.config import InstanceSetConfig, RecipeConfig

ENTRY = "transferred_recipe"


def improvement(log: dict[str, Any]) -> float:
    final = log["eval_curve"][-1][1]
    if log["diverged"] or not math.isfinite(final):
        return -1.0
    return (log["initial_eval_loss"] - final) / log["initial_eval_loss"]


def recipe_episode(ctx: MethodContext, job: tuple[dict, str, int]) -> dict:
    """One recipe (as JSON) on one instance: a worker's part of a trial."""
    recipe, instance, seed = job
    env = ctx.env()
    return run_episode(env, recipe_plan(env, RecipeConfig(**recipe), instance), instance, seed)


def transferred_recipe(cfg: InstanceSetConfig, n_trials: int, store: RecordStore, pool: WorkerPool,
                       seed: int = 0) -> dict[str, Any]:
    """The tuned recipe, its objective and the whole tuning's cost: read back when the training
    instances and the trial count are the ones it was tuned with, else tuned (or its study resumed)."""
    key = {"training_instances": [instance_key(cfg, i.name) for i in cfg.train], "n_trials": n_trials, "seed": seed}
    saved = store.get(ENTRY, ENTRY, key)
    if saved is not None:
        return saved
    result = tune(cfg, n_trials, seed, store.folder / "studies" / f"transferred-{digest(key)}.db",
                  f"transferred-{digest(key)}", pool)
    store.put(ENTRY, ENTRY, key, result)
    return result


def tune(cfg: InstanceSetConfig, n_trials: int, seed: int, storage, name: str, pool: WorkerPool) -> dict[str, Any]:
    """Optuna TPE over recipes on ``cfg.train`` (seed ``seed`` for every episode)."""
    import optuna

    train = [i.name for i in cfg.train]

    def objective(trial: optuna.Trial) -> float:
        recipe = suggest_recipe(trial, cfg.bounds, list(cfg.train)).model_dump(mode="json")
        logs = pool.map(recipe_episode, [(recipe, inst, seed) for inst in train])
        gains = [improvement(log) for log in logs]
        trial.set_user_attr("compute_steps", sum(len(log["schedule"]) for log in logs))
        trial.set_user_attr("per_instance", dict(zip(train, gains)))
        return sum(gains) / len(gains)

    storage.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{storage}", load_if_exists=True,
                                direction="maximize")
    done = len(finished_trials(study))
    study.sampler = make_sampler("tpe", sampler_seed(seed, done))  # a resumed study does not replay its draws
    if n_trials > done:
        study.optimize(objective, n_trials=n_trials - done, catch=())
    best = study.best_trial
    return {"recipe": RecipeConfig(**best.params).model_dump(mode="json"), "objective": best.value,
            "per_instance": best.user_attrs["per_instance"], "n_trials": len(finished_trials(study)),
            "compute_steps": compute_steps(finished_trials(study)), "training_instances": train}
