"""Recipes a user would run without tuning, besides the instance set's declared ``default_recipe``:
the hand schedule, the default's lr with 10% warmup and cosine decay."""
from __future__ import annotations

from trainers.config import InstanceSetConfig, RecipeConfig


def hand_schedule(cfg: InstanceSetConfig) -> RecipeConfig:
    r = cfg.default_recipe
    return RecipeConfig(lr=r.lr, weight_decay=r.weight_decay, grad_clip=r.grad_clip, warmup_fraction=0.1,
                        decay="cosine")
