"""The learned controller: one run, its actions deterministic."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from agents.methods.base import Method, MethodContext, RunRecord
from envs.episode import PolicyPlan, run_episode


def no_change(env):
    """The action that changes nothing: zeros for a box, the menu's all-zero row for a discrete one."""
    if env.action_space.shape:
        return lambda obs: np.zeros(env.action_space.shape, dtype=np.float32)
    menu = env.action_map.menu if hasattr(env.action_map, "menu") else env.actions.cfg.menu
    index = next(i for i, row in enumerate(menu) if not any(row))
    return lambda obs: index


@dataclass
class PolicyMethod(Method):
    agent: str  # the agent folder
    name: str = "policy"
    # a residual controller's start (envs/control.py): None, the recipe's own lr; "user_guess", the
    # recipe's lr x a factor drawn from the seed (0.01x to 100x), the same for every method that asks
    start: Optional[str] = None
    act: bool = True  # False: the same start and base schedule, never corrected (no control)
    compared: bool = True  # False for the variants above: the held-out table's, not compare's rivals

    def key(self) -> dict[str, Any]:
        # its weights, observation statistics and action mapping: an agent trained further is run afresh
        from agents.learners.agent_folder import Controller

        variant = {**({"start": self.start} if self.start else {}), **({} if self.act else {"act": False})}
        return {"agent": Controller(self.agent).fingerprint(), **variant}  # a plain policy's key as it always was

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        controller = ctx.controller(self.agent)
        env = ctx.env(control=controller.env_config.control)
        controller.check_compatible(env.action_map)
        act = controller.act if self.act else no_change(env)
        return {1: RunRecord.of_episode(run_episode(env, PolicyPlan(act, self.start), instance, seed))}
