"""Population Based Training on Ray Tune (agents/baselines/pbt.py) as a compared method: the
budget is the population size, each population saved on its own. Ray Tune spreads a population's
members over the cores, so PBT runs after the methods that share out instance x seed pairs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from agents.methods.base import Method, MethodContext, RunRecord, digest


@dataclass
class PBTMethod(Method):
    budgets: tuple[int, ...] = (4,)  # population sizes
    name: str = "pbt"
    runs_in_worker = False

    def tasks(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(f"{self.name}@{n}", (n,)) for n in self.budgets]

    def stale(self, record: dict[int, RunRecord]) -> bool:
        # a population with errored members kept its checkpoints: the same command continues it
        return any((r.errored_members or 0) > 0 for r in record.values())

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        from agents.baselines.pbt import run_pbt

        # experiment folders named after the instance's key: another model, file or episode starts afresh
        folder = ctx.study_path("pbt") / digest(ctx.instance_key(instance))
        return {n: RunRecord.from_json(run_pbt(ctx.cfg, instance, seed, n, folder)) for n in budgets}
