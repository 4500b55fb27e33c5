"""Held-out evaluation: every held-out instance x seed runs three times on the same seeds (same
batches and dropout), through the shared episode loop:

  policy             the learned controller (deterministic actions)
  default_recipe     the instance set's declared static recipe
  initial_constant   no control: the policy's own drawn start, held for the whole episode

The last separates what the policy's steering buys from what its starting point gives. Validation
drives nothing here; each run's test split is what is reported.
"""
from __future__ import annotations

from typing import Optional

from tqdm.auto import tqdm

from agents.learners.agent_folder import Controller
from agents.reporting.heldout_report import METHODS
from envs.episode import HoldPlan, PolicyPlan, recipe_plan, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.config import ConfigError, InstanceSetConfig


def evaluate_heldout(controller: Controller, seeds: list[int], env: Optional[FineTuneEnv] = None,
                     cfg: Optional[InstanceSetConfig] = None, show_progress: bool = True) -> dict[str, list[dict]]:
    """Returns method -> episode logs."""
    cfg = cfg or controller.env_config
    if not cfg.heldout:
        raise ConfigError(f"instance set {cfg.name!r} has no held-out instances to evaluate on")
    env = env or FineTuneEnv(cfg, split="heldout", evaluate_test=True)
    env.evaluate_test = True
    controller.check_compatible(env.actions)
    jobs = [(inst.name, s) for inst in cfg.heldout for s in seeds]
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    policy = PolicyPlan(controller.act)
    for name, seed in tqdm(jobs, desc="held-out evaluation", unit="instance x seed", disable=not show_progress):
        runs["policy"].append(run_episode(env, policy, name, seed))
        runs["default_recipe"].append(run_episode(env, recipe_plan(env, cfg.default_recipe, name), name, seed))
        runs["initial_constant"].append(run_episode(env, HoldPlan(), name, seed))
    return runs
