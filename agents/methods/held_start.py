"""No control: the start drawn from the instance's ranges (the one the policy starts from on the
same seed), held for the whole episode. It separates what steering buys from what the start gives."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from agents.methods.base import Method, MethodContext, RunRecord
from envs.episode import ConstantPlan, run_episode


@dataclass
class HeldStartMethod(Method):
    name: str = "held_start"
    compared = False  # the held-out evaluation's third method, not a rival in agents.compare

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        return {1: RunRecord.of_episode(run_episode(ctx.env(), ConstantPlan(), instance, seed))}
