"""One-run self-tuning optimizers (Schedule-Free AdamW, Prodigy) at the defaults their READMEs
document, one configuration for every instance (trainers/session.py SELF_TUNING): the engine's
client optimizer is theirs, so are lr and weight decay; clipping is the default recipe's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from agents.methods.base import Method, MethodContext, RunRecord, with_optimizer
from envs.episode import ConstantPlan, run_episode
from trainers.config import ConfigError, InstanceSetConfig
from trainers.session import SELF_TUNING, Hparams


@dataclass
class SelfTuningMethod(Method):
    name: str  # a key of SELF_TUNING: the optimizer
    grad_clip: float  # the default recipe's

    def key(self) -> dict[str, Any]:
        return {"settings": SELF_TUNING[self.name], "grad_clip": self.grad_clip}

    def ruled_out(self, cfg: InstanceSetConfig) -> Optional[str]:
        try:
            with_optimizer(cfg, self.name)
        except ConfigError as err:
            return str(err).splitlines()[-1]
        return None

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        own = SELF_TUNING[self.name]
        plan = ConstantPlan(Hparams(own["lr"], own["weight_decay"], self.grad_clip))
        return {1: RunRecord.of_episode(run_episode(ctx.env(self.name), plan, instance, seed))}
