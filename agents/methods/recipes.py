"""Static recipes, one run each: what a user runs without tuning (the set's declared default,
warmup and cosine at its lr), and the recipe tuned once on the training instances."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from agents.methods.base import Method, MethodContext, RunRecord
from envs.episode import recipe_plan, run_episode
from trainers.config import InstanceSetConfig, RecipeConfig


@dataclass
class RecipeMethod(Method):
    name: str
    recipe: RecipeConfig

    def key(self) -> dict[str, Any]:
        return {"recipe": self.recipe.model_dump(mode="json")}

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        env = ctx.env()
        return {1: RunRecord.of_episode(run_episode(env, recipe_plan(env, self.recipe, instance), instance, seed))}


def hand_schedule(cfg: InstanceSetConfig) -> RecipeConfig:
    """The default recipe's lr, weight decay and clipping, with 10% warmup and cosine decay."""
    r = cfg.default_recipe
    return RecipeConfig(lr=r.lr, weight_decay=r.weight_decay, grad_clip=r.grad_clip, warmup_fraction=0.1,
                        decay="cosine")
