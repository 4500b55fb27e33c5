"""Searches over static recipes in one process: random search, and TPE with median pruning. At a
budget B the record is the best-by-validation of the study's first B finished trials, and its
compute is every step those trials ran (pruned ones included)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from agents.baselines.optuna_search import best_trial, compute_steps, finished_trials, run_study
from agents.methods.base import Method, MethodContext, RunRecord, digest


@dataclass
class SearchMethod(Method):
    name: str
    sampler: str  # agents.baselines.optuna_search.SAMPLERS
    pruner: str  # agents.baselines.optuna_search.PRUNERS
    budgets: tuple[int, ...] = (1, 4, 8, 16)

    def key(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "pruner": self.pruner}

    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        # the study's name carries what decided it: another instance key or setting starts a new study
        name = f"{instance}-seed{seed}-{self.name}-{digest({'instance': ctx.instance_key(instance), 'method': self.key()})}"
        study = run_study(ctx.env(), instance, seed, max(budgets), f"sqlite:///{ctx.study_path(name + '.db')}", name,
                          pruner=self.pruner, sampler_seed_base=seed, show_progress=False, sampler=self.sampler)
        return {b: record_at_budget(study, b) for b in budgets}


def record_at_budget(study, budget: int) -> RunRecord:
    best = best_trial(study, budget)
    cost = compute_steps(finished_trials(study)[:budget])
    if best is None:  # every trial pruned or diverged: scored as the base model by the report
        return RunRecord(float("nan"), None, cost, val_loss=float("nan"))
    return RunRecord(best.user_attrs["test_loss"], best.user_attrs.get("test_metric"), cost, val_loss=best.value,
                     schedule_lr=best.user_attrs.get("schedule_lr"), eval_curve=best.user_attrs.get("eval_curve"),
                     params=best.params)
