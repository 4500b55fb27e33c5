"""Headroom: what a perfect controller could gain on an instance, before any learner is judged on
it (agents.headroom). Open-loop schedules from the same start, for one instance and seed (the seed
draws the start, as a controller's episode would):

  hold            the drawn start lr, held (the held start)
  constant x m    the start lr times m, held, for m in 1/16 .. 16
  warmup-decay    10% linear warmup to start x m, then cosine decay, for a few peaks m
  default recipe  the instance set's declared recipe

Every schedule runs through the shared episode loop on the same seed (same batches, dropout and
evaluation points). Selection among schedules is by final validation loss, as a controller that
sees only validation would choose; the test loss of the selection is what is reported. Records
are saved per instance x seed through the experiment runner: rerunning resumes.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from agents.experiments.matched_compute import method_context
from agents.experiments.runner import RecordStore, Task, WorkerPool, pair_file, run_tasks
from agents.methods.base import MethodContext, instance_key
from envs.episode import ConstantPlan, SchedulePlan, recipe_plan, run_episode
from trainers.config import InstanceSetConfig, RecipeConfig
from trainers.schedules import recipe_schedule
from trainers.session import Hparams

FORMAT = 2  # bump when what a record holds, or how it is computed, changes (resumed runs recompute)
CONSTANT_MULTIPLIERS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0, 16.0)
WARMUP_DECAY_PEAKS = (1 / 4, 1.0, 4.0)


def run_per_pair(cfg: InstanceSetConfig, names: list[str], seeds: int, folder: Path, entry: str, extra_key: dict,
                 work, pool: dict) -> dict[tuple[str, int], dict]:
    """One record per instance x seed through the runner: ``work(ctx, instance, seed)``, saved in
    ``folder/per_run`` under the instance's key plus ``extra_key``."""
    from trainers.progress import progress

    keys = {n: {"instance": instance_key(cfg, n), **extra_key} for n in progress(names, desc="checking data", unit="instance")}
    tasks = [Task(pair_file(n, s), entry, keys[n], work, (n, s)) for n in names for s in range(seeds)]
    make_context = functools.partial(method_context, cfg.model_dump(mode="json"), str(folder / "studies"))
    with WorkerPool(make_context, **pool) as workers:
        records = run_tasks(tasks, RecordStore(folder / "per_run"), workers, desc=folder.name)
    return {(n, s): records[pair_file(n, s), entry] for n in names for s in range(seeds)}


def headroom(cfg: InstanceSetConfig, names: list[str], seeds: int, folder: Path, pool: dict) -> dict[str, Any]:
    """Per instance: the summary over its seeds; across instances: the aggregate; and every record."""
    extra = {"format": FORMAT, "default_recipe": cfg.default_recipe.model_dump(mode="json")}
    records = run_per_pair(cfg, names, seeds, folder, "headroom", extra, schedules_from, pool)
    summary = {n: summarise_instance([records[(n, s)] for s in range(seeds)]) for n in names}
    return {"instances": summary, "aggregate": aggregate(summary),
            "runs": [records[(n, s)] for n in names for s in range(seeds)]}


def schedule_summary(log: dict[str, Any]) -> dict[str, Any]:
    return {"val_loss": log["eval_curve"][-1][1], "test_loss": log["test_loss"], "test_metric": log["test_metric"],
            "diverged": log["diverged"], "lr_first": log["schedule"][0]["lr"], "lr_last": log["schedule"][-1]["lr"]}


def schedules_from(ctx: MethodContext, instance: str, seed: int) -> dict[str, Any]:
    """Every open-loop schedule from the seed's drawn start; returns per-schedule summaries."""
    env = ctx.env()
    env.reset(seed=seed, options={"instance": instance})
    start = env.session.hparams()
    base_test = env.session.evaluate("test")
    lo, hi = env.cfg.bounds.lr
    total = env.cfg.steps_for(env.cfg.instance(instance))
    runs: dict[str, dict] = {"hold": schedule_summary(run_episode(env, ConstantPlan(), instance, seed))}
    for m in CONSTANT_MULTIPLIERS:
        if m == 1.0:
            continue
        h = Hparams(min(max(start.lr * m, lo), hi), start.weight_decay, start.grad_clip)
        runs[f"constant x{m:g}"] = dict(schedule_summary(run_episode(env, ConstantPlan(h), instance, seed)), multiplier=m)
    runs["constant x1"] = dict(runs["hold"], multiplier=1.0)
    for m in WARMUP_DECAY_PEAKS:
        recipe = RecipeConfig(lr=min(max(start.lr * m, lo), hi), weight_decay=start.weight_decay,
                              grad_clip=start.grad_clip, warmup_fraction=0.1, decay="cosine")
        plan = SchedulePlan(recipe_schedule(recipe, total, min_lr=lo))
        runs[f"warmup-cosine peak x{m:g}"] = dict(schedule_summary(run_episode(env, plan, instance, seed)), multiplier=m)
    runs["default recipe"] = schedule_summary(run_episode(env, recipe_plan(env, env.cfg.default_recipe, instance),
                                                  instance, seed))
    return {"instance": instance, "seed": seed, "start": start.as_dict(), "base_test_loss": base_test.loss,
            "base_test_metric": base_test.metric, "metric_name": base_test.metric_name, "runs": runs}


def summarise_instance(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One instance over its seeds: each figure averaged over the starts (seeds) tried."""
    def mean(xs):
        xs = [x for x in xs if x is not None and math.isfinite(x)]
        return sum(xs) / len(xs) if xs else None

    open_loop = lambda r: {k: v for k, v in r["runs"].items() if k != "default recipe"}  # noqa: E731
    best = [min(open_loop(r).items(), key=lambda kv: kv[1]["val_loss"] if math.isfinite(kv[1]["val_loss"])
                else math.inf) for r in records]
    # the lr that really ran (a multiple beyond the hard bounds is clipped to them)
    constants = [min(((v["lr_first"], v) for k, v in r["runs"].items() if k.startswith("constant")),
                     key=lambda x: x[1]["val_loss"] if math.isfinite(x[1]["val_loss"]) else math.inf)
                 for r in records]
    return {
        "n_seeds": len(records),
        "start_lrs": [r["start"]["lr"] for r in records],
        "hold_test_loss": mean(r["runs"]["hold"]["test_loss"] for r in records),
        "best_open_loop_test_loss": mean(v["test_loss"] for _, v in best),
        "best_open_loop": [k for k, _ in best],
        "default_recipe_test_loss": mean(r["runs"]["default recipe"]["test_loss"] for r in records),
        "base_test_loss": mean(r["base_test_loss"] for r in records),
        "base_test_metric": mean(r["base_test_metric"] for r in records),
        "hold_test_metric": mean(r["runs"]["hold"]["test_metric"] for r in records),
        "best_test_metric": mean(v["test_metric"] for _, v in best),
        "best_constant_lr": math.exp(sum(math.log(lr) for lr, _ in constants) / len(constants)),
        "best_constant_lrs": [lr for lr, _ in constants],
        "hold_minus_best_per_seed": [r["runs"]["hold"]["test_loss"] - v["test_loss"] for r, (_, v) in zip(records, best)],
        # (reference - best) / reference test loss, per seed: scale-free, so instances can be pooled
        "gain_over_hold_per_seed": [_gain(r["runs"]["hold"]["test_loss"], v["test_loss"]) for r, (_, v) in zip(records, best)],
        "gain_over_default_recipe_per_seed": [_gain(r["runs"]["default recipe"]["test_loss"], v["test_loss"])
                                              for r, (_, v) in zip(records, best)],
    }


def _gain(reference: float, best: float) -> float:
    """Relative test-loss gain of the best schedule over a reference. A diverged run (no finite loss)
    counts as the extreme: a diverged reference gives 1.0, a diverged best -1.0."""
    if not math.isfinite(reference):
        return 1.0
    if not math.isfinite(best):
        return -1.0
    return (reference - best) / reference


def aggregate(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Across instances: IQM of the per-seed relative gains with a stratified-bootstrap 95% interval
    (seeds resampled within each instance), and how far apart the instances' best constant lrs are."""
    from agents.reporting.statistics import stratified_bootstrap_iqm

    out: dict[str, Any] = {}
    for ref in ("hold", "default_recipe"):
        per_instance = {n: s[f"gain_over_{ref}_per_seed"] for n, s in summary.items()}
        point, lo, hi = stratified_bootstrap_iqm(per_instance)
        out[f"best_open_loop_gain_over_{ref}"] = {"iqm": point, "ci95_low": lo, "ci95_high": hi,
                                                   "per_instance": per_instance}
    lrs = {n: s["best_constant_lr"] for n, s in summary.items()}
    out["best_constant_lr_spread"] = max(lrs.values()) / min(lrs.values()) if lrs else None
    out["interval"] = ("IQM over instances x seeds of (reference - best open-loop) / reference test loss; 95% "
                       "percentile interval from 5,000 stratified bootstrap resamples (seeds within each instance; the "
                       "instances are fixed, so it covers the spread over starts, not over the choice of instances)")
    return out
