"""The learned controller: one run, its actions deterministic."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from agents.methods.base import Method, MethodContext, RunRecord
from envs.episode import PolicyPlan, run_episode


@dataclass
class PolicyMethod(Method):
    agent: str  # the agent folder
    name: str = "policy"

    def key(self) -> dict[str, Any]:
        # its weights, observation statistics and action mapping: an agent trained further is run afresh
        from agents.learners.agent_folder import Controller

        return {"agent": Controller(self.agent).fingerprint()}

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        controller = ctx.controller(self.agent)
        env = ctx.env(control=controller.env_config.control)
        controller.check_compatible(env.action_map)
        return {1: RunRecord.of_episode(run_episode(env, PolicyPlan(controller.act), instance, seed))}
