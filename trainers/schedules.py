"""Static schedules (recipes): the hyperparameters at each step, decided before the run starts."""
from __future__ import annotations

import math

from trainers.config import RecipeConfig
from trainers.session import Hparams


def recipe_lr(recipe: RecipeConfig, step: int, total_steps: int) -> float:
    """Linear warmup to recipe.lr, then constant, linear or cosine decay to zero at the end."""
    warmup = int(round(recipe.warmup_fraction * total_steps))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    span = max(total_steps - warmup, 1)
    frac = (step - warmup) / span
    if recipe.decay == "constant":
        return recipe.lr
    if recipe.decay == "linear":
        return recipe.lr * max(1.0 - frac, 0.0)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def recipe_schedule(recipe: RecipeConfig, total_steps: int, min_lr: float = 0.0) -> list[Hparams]:
    """One Hparams per training step."""
    return [
        Hparams(max(recipe_lr(recipe, s, total_steps), min_lr), recipe.weight_decay, recipe.grad_clip)
        for s in range(total_steps)
    ]


def schedule_from_json(steps: object, source: str) -> list[Hparams]:
    """A recorded per-step schedule (schedule.json's ``schedule``), checked step by step: the one
    rule for every reader. lr and the clipping threshold must be > 0; weight decay >= 0 (a
    self-tuning optimizer runs without it). Anything else is a ConfigError naming the step."""
    from trainers.config import HPARAM_NAMES, ConfigError

    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{source}: field 'schedule' is missing or empty; is this a schedule file?")
    out = []
    for i, step in enumerate(steps):
        ok = (isinstance(step, dict) and set(step) == set(HPARAM_NAMES)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in step.values())
              and step["lr"] > 0 and step["grad_clip"] > 0 and step["weight_decay"] >= 0)
        if not ok:
            raise ConfigError(f"{source}: schedule[{i}] must be {{lr > 0, weight_decay >= 0, grad_clip > 0}}, "
                              f"got {step!r}")
        out.append(Hparams(**{k: float(v) for k, v in step.items()}))
    return out
