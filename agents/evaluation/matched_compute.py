"""Every method on one held-out instance and seed, compute counted in training steps actually run
(pruned trials and PBT members included). Searches select by validation loss; what is reported is
the test loss of the selected run.

  policy           the learned controller: one run
  default_recipe   the configs/ recipe: one run
  hand_schedule    warmup then cosine at the recipe's lr: one run
  random_search    random recipes from the shared space, best of the first B
  optuna_tpe       TPE + median pruning, best of the first B finished trials
  pbt              Ray Tune Population Based Training, population P
  transferred_recipe
                   one recipe tuned by Optuna on the training instances, applied unchanged: one run
  schedulefree_adamw, prodigy
                   one-run self-tuning optimizers at their READMEs' defaults, one configuration for
                   every instance (trainers/session.py SELF_TUNING), clipping at the default recipe's

Each finished instance x seed is saved atomically under per_run/, keyed by the agent's weights and
the budgets, so an interrupted comparison resumes where it was, and an agent trained further is
compared afresh.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import optuna

from agents.baselines.fixed_recipes import hand_schedule
from agents.baselines.optuna_search import best_trial, finished_trials, run_study
from agents.learners.agent_folder import Controller
from envs.episode import HoldPlan, PolicyPlan, recipe_plan, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.atomic_files import write_json_atomic
from trainers.config import RecipeConfig
from trainers.session import SELF_TUNING, Hparams

optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_at_budgets(study: optuna.Study, budgets: list[int]) -> dict[int, dict]:
    """For each budget B: the best-by-validation of the first B finished trials, and its cost."""
    finished = finished_trials(study)
    out = {}
    for b in budgets:
        best = best_trial(study, b)
        out[b] = {"compute_steps": sum(int(t.user_attrs.get("compute_steps", 0)) for t in finished[:b]),
                  "test_loss": best.user_attrs["test_loss"] if best else float("nan"),
                  "test_metric": best.user_attrs.get("test_metric") if best else None,
                  "val_loss": best.value if best else float("nan"),
                  "params": best.params if best else None,
                  "eval_curve": best.user_attrs.get("eval_curve") if best else None,
                  "schedule_lr": best.user_attrs.get("schedule_lr") if best else None}
    return out


def one_run(log: dict[str, Any]) -> dict[str, Any]:
    """A one-run method's record: its cost, test loss and task metric, and the whole episode log."""
    return {"compute_steps": len(log["schedule"]), "test_loss": log["test_loss"], "test_metric": log["test_metric"],
            "log": log}


def self_tuning_config(cfg, name: str):
    """The instance set with ``name`` as the client optimizer; a ConfigError where the set's
    precision or ZeRO stage rules it out."""
    from trainers.config import parse_config

    d = cfg.model_dump(mode="json")
    d["session"]["optimizer"] = name
    return parse_config(d)


def self_tuning_envs_left_out(cfg) -> dict[str, str]:
    """Which self-tuning optimizers the set's session rules out, and why (that method is left out
    of the comparison, not faked; no engine is built)."""
    from trainers.config import ConfigError

    out = {}
    for name in SELF_TUNING:
        try:
            self_tuning_config(cfg, name)
        except ConfigError as err:
            out[name] = str(err).splitlines()[-1]
    return out


def self_tuning_envs(cfg) -> dict[str, FineTuneEnv]:
    """One environment per self-tuning optimizer the set allows: the same instances and episodes,
    another client optimizer in the engine."""
    ruled_out = self_tuning_envs_left_out(cfg)
    return {name: FineTuneEnv(self_tuning_config(cfg, name), split="all", evaluate_test=True)
            for name in SELF_TUNING if name not in ruled_out}


def self_tuning_run(env: FineTuneEnv, instance: str, seed: int) -> dict[str, Any]:
    """One run: the optimizer's own lr and weight decay, the default recipe's clipping threshold."""
    own = SELF_TUNING[env.cfg.session.optimizer]
    log = run_episode(env, HoldPlan(Hparams(own["lr"], own["weight_decay"], env.cfg.default_recipe.grad_clip)),
                      instance, seed)
    return {1: one_run(log)}


def compare_one(env: FineTuneEnv, controller: Controller, instance: str, seed: int, budgets: list[int],
                storage_dir: Path, pbt_populations: tuple[int, ...] = (),
                self_tuning: Optional[dict[str, FineTuneEnv]] = None, study_tag: str = "",
                transferred: Optional[RecipeConfig] = None) -> dict[str, dict]:
    """All methods on one instance and seed. Returns method -> budget -> record. ``study_tag`` goes
    into the Optuna studies' names: a comparison with another key starts new studies instead of
    reading back old ones."""
    cfg = env.cfg
    res: dict[str, dict] = {}
    log = run_episode(env, PolicyPlan(controller.act), instance, seed)
    res["policy"] = {1: one_run(log)}
    fixed = [("default_recipe", cfg.default_recipe), ("hand_schedule", hand_schedule(cfg))]
    if transferred is not None:  # tuned once on the training instances, applied unchanged here
        fixed.append(("transferred_recipe", transferred))
    for method, recipe in fixed:
        log = run_episode(env, recipe_plan(env, recipe, instance), instance, seed)
        res[method] = {1: one_run(log)}
    n = max(budgets)
    for method, sampler, pruner in (("random_search", "random", "none"), ("optuna_tpe", "tpe", "median")):
        name = f"{instance}-seed{seed}-{method}" + (f"-{study_tag}" if study_tag else "")
        study = run_study(env, instance, seed, n, f"sqlite:///{storage_dir / (name + '.db')}", name, pruner=pruner,
                          sampler_seed_base=seed, show_progress=False, sampler=sampler)
        res[method] = search_at_budgets(study, budgets)
    if pbt_populations:  # Ray Tune trials in their own processes; the in-process env is not used
        from agents.baselines.pbt import run_pbt

        res["pbt"] = {p: run_pbt(cfg, instance, seed, p, storage_dir / "pbt") for p in pbt_populations}
    for name, st_env in (self_tuning or {}).items():
        res[name] = self_tuning_run(st_env, instance, seed)
    return res


def save_results(path: Path, key: dict, results: dict) -> None:
    write_json_atomic(path, {"key": key, "results": results}, indent=None)


def load_saved_results(path: Path, key: dict) -> Optional[dict[str, Any]]:
    """A finished instance x seed from an earlier, interrupted run of the same comparison, if any."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: recompute it
    if saved.get("key") != key:  # another agent, a further-trained one, or other budgets: recompute
        return None
    return {m: {int(b): rec for b, rec in by_b.items()} for m, by_b in saved["results"].items()}
