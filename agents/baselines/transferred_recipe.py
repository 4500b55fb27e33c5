"""The "learned once" static rival: one recipe tuned by Optuna on the training instances, then
applied unchanged to every held-out instance.

The objective is the mean normalised validation improvement over the training instances,
(initial eval loss - final eval loss) / initial eval loss per instance (a diverged run counts as
-1), so a classification instance at loss 1 and a language-modelling one at loss 6 weigh alike.
The tuning is paid once, like the controller's training: its cost is reported apart from the
per-instance compute. The study is stored in SQLite and resumes where it stopped.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import optuna

from agents.baselines.optuna_search import finished_trials, make_sampler
from agents.baselines.search_space import suggest_recipe
from envs.episode import recipe_plan, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.config import RecipeConfig


def improvement(log: dict[str, Any]) -> float:
    final = log["eval_curve"][-1][1]
    if log["diverged"] or not math.isfinite(final):
        return -1.0
    return (log["initial_eval_loss"] - final) / log["initial_eval_loss"]


def run_recipe(env: FineTuneEnv, recipe: dict, names: list[str], seed: int) -> list[dict]:
    """One recipe (as JSON) on each named instance in ``env``: the tuning's default runner, and
    what each Ray actor runs for agents.compare --workers."""
    r = RecipeConfig(**recipe)
    return [run_episode(env, recipe_plan(env, r, n), n, seed) for n in names]


RunRecipe = Callable[[dict, list[str], int], list[dict]]  # (recipe, instances, seed) -> their logs, in order


def tune_transferred_recipe(env: FineTuneEnv, n_trials: int, seed: int, storage: Path, name: str,
                            runner: Optional[RunRecipe] = None) -> dict[str, Any]:
    """Optuna TPE over recipes on ``env.cfg.train`` (seed ``seed`` for every episode); returns the best
    recipe, its objective, and the training steps the whole tuning spent. ``runner`` runs one
    trial's episodes elsewhere (agents.compare --workers: on Ray actors); by default, in ``env``."""
    cfg = env.cfg
    train = list(cfg.train)

    def objective(trial: optuna.Trial) -> float:
        recipe = suggest_recipe(trial, cfg.bounds, train)
        gains, steps = [], 0
        for log in (runner or (lambda *a: run_recipe(env, *a)))(recipe.model_dump(mode="json"), [i.name for i in train], seed):
            gains.append(improvement(log))
            steps += len(log["schedule"])
        trial.set_user_attr("compute_steps", steps)
        trial.set_user_attr("per_instance", dict(zip((i.name for i in train), gains)))
        return sum(gains) / len(gains)

    storage.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{storage}", load_if_exists=True,
                                direction="maximize")
    done = len(finished_trials(study))
    study.sampler = make_sampler("tpe", seed + 7919 * done)  # a resumed study does not replay its first draws
    if n_trials > done:
        study.optimize(objective, n_trials=n_trials - done, catch=())
    best = study.best_trial
    recipe = RecipeConfig(**best.params)
    return {"recipe": recipe.model_dump(mode="json"), "objective": best.value,
            "per_instance": best.user_attrs["per_instance"], "n_trials": len(finished_trials(study)),
            "compute_steps": sum(int(t.user_attrs.get("compute_steps", 0)) for t in finished_trials(study)),
            "training_instances": [i.name for i in train]}
