"""One fine-tuning episode, driven by a controller, a static recipe, or a recorded schedule.

All three go through FineTuneEnv, so they share the engine, the seeds (batch order, dropout)
and the evaluation points: differences in their results come from the hyperparameters alone.
"""
from __future__ import annotations

from typing import Optional, Sequence

from envs.finetune_env import FineTuneEnv
from trainers.config import RecipeConfig
from trainers.schedules import recipe_schedule
from trainers.session import Hparams


def run_controller(env: FineTuneEnv, controller, instance: str, seed: int) -> dict:
    """The policy chooses hyperparameters at every decision point (deterministic actions)."""
    obs, _ = env.reset(seed=seed, options={"instance": instance})
    done = False
    while not done:
        obs, _, term, trunc, info = env.step(controller.act(obs))
        done = term or trunc
    return info["episode_log"]


def run_constant(env: FineTuneEnv, instance: str, seed: int) -> dict:
    """No control: the same reset (so the same drawn initial hyperparameters) as run_controller,
    held for the whole episode. Against it, a policy's gain is its steering, not the draw."""
    env.reset(seed=seed, options={"instance": instance})
    initial = env.session.hparams()
    k = env.cfg.episode.decision_interval
    done = False
    while not done:
        _, _, term, trunc, info = env.step_with_schedule([initial] * k)
        done = term or trunc
    return info["episode_log"]


def run_schedule(env: FineTuneEnv, schedule: Sequence[Hparams | dict], instance: str, seed: int) -> dict:
    """Per-step hyperparameters fixed in advance, evaluated at the same points as a controller."""
    steps = [s if isinstance(s, Hparams) else Hparams(**s) for s in schedule]
    env.reset(seed=seed, options={"instance": instance, "initial_hparams": steps[0]})
    if len(steps) < env.total_steps:
        raise ValueError(f"schedule has {len(steps)} steps; instance {instance!r} needs {env.total_steps}")
    k = env.cfg.episode.decision_interval
    done, i = False, 0
    while not done:
        _, _, term, trunc, info = env.step_with_schedule(steps[i : i + k])
        i += k
        done = term or trunc
    return info["episode_log"]


def run_recipe(env: FineTuneEnv, recipe: RecipeConfig, instance: str, seed: int,
               total_steps: Optional[int] = None) -> dict:
    steps = total_steps or env.cfg.steps_for(env.cfg.instance(instance))
    return run_schedule(env, recipe_schedule(recipe, steps, min_lr=env.cfg.bounds.lr[0]), instance, seed)
