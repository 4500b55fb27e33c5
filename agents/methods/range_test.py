"""The learning-rate range test a user would run before training (Smith 2017; fastai's and
Lightning's ``lr_find``, ``torch-lr-finder``), then one run of their recipe at the lr it suggests.

The test, as torch-lr-finder 0.2 runs it by default: from the instance's base model, the lr grows
exponentially from the lower to the upper hard bound over ``iterations`` training steps (100);
the loss is smoothed exponentially (factor 0.05) and the test stops once the smoothed loss
passes 5 x its best. The suggestion is the lr at the steepest descent of the smoothed loss
(after skipping the first 10 and last 5 points); with too few points left, the lr of the lowest
smoothed loss over 10 (fastai's older rule). The recipe then runs from the base model again,
on the same seed as every other method, with that peak lr. Its compute is both: the test's
steps plus the run's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from agents.methods.base import Method, MethodContext, RunRecord
from envs.episode import recipe_plan, run_episode
from trainers.config import RecipeConfig
from trainers.session import Hparams

ITERATIONS = 100
SMOOTH = 0.05
DIVERGE = 5.0
SKIP_START, SKIP_END = 10, 5


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """torch-lr-finder's suggestion: the lr where the smoothed loss falls fastest (per log lr)."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if len(lrs) > SKIP_START + SKIP_END + 1:
        x, y = np.log(lrs[SKIP_START:-SKIP_END]), losses[SKIP_START:-SKIP_END]
        return float(np.exp(x[int(np.argmin(np.gradient(y, x)))]))
    return float(lrs[int(np.argmin(losses))] / 10.0)


def range_test(env, instance: str, seed: int, recipe: RecipeConfig, iterations: int = ITERATIONS) -> dict[str, Any]:
    """The sweep on (instance, seed) from its base model: its lrs, smoothed losses, steps spent and
    suggestion."""
    env.reset(seed=seed, options={"instance": instance})
    session = env.session

    def train_at(lr: float) -> float:
        session.set_hparams(Hparams(lr, recipe.weight_decay, recipe.grad_clip))
        return session.train(1)[0].loss

    return sweep(train_at, *env.cfg.bounds.lr, iterations)


def sweep(train_at, lo: float, hi: float, iterations: int = ITERATIONS) -> dict[str, Any]:
    """The exponential sweep from ``lo`` to ``hi``, one training step at each lr (``train_at(lr)``
    returns the step's loss), stopped where the smoothed loss passes DIVERGE x its best."""
    lrs, smoothed, best, steps = [], [], math.inf, 0
    for i in range(iterations):
        lr = lo * (hi / lo) ** (i / max(iterations - 1, 1))
        loss = train_at(lr)
        steps += 1
        if not math.isfinite(loss):
            break
        value = loss if not smoothed else SMOOTH * loss + (1 - SMOOTH) * smoothed[-1]
        lrs.append(lr)
        smoothed.append(value)
        best = min(best, value)
        if value > DIVERGE * best:
            break
    lr = suggest(lrs, smoothed) if lrs else lo
    return {"lrs": lrs, "smoothed_loss": smoothed, "steps": steps, "suggested_lr": float(min(max(lr, lo), hi))}


@dataclass
class RangeTestMethod(Method):
    recipe: RecipeConfig  # the user's recipe: its shape, weight decay and clipping; the test sets its lr
    name: str = "range_test"
    iterations: int = ITERATIONS

    def key(self) -> dict[str, Any]:
        return {"recipe": self.recipe.model_dump(mode="json"), "iterations": self.iterations}

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        env = ctx.env()
        test = range_test(env, instance, seed, self.recipe, self.iterations)
        recipe = self.recipe.model_copy(update={"lr": test["suggested_lr"]})
        log = run_episode(env, recipe_plan(env, recipe, instance), instance, seed)
        log["range_test"] = test
        record = RunRecord.of_episode(log)
        record.compute_steps += test["steps"]
        return {1: record}
