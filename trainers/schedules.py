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
