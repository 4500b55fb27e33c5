"""What a perfect controller could gain on an instance: open-loop schedules from the same start.

For one held-out instance and seed (the seed draws the start, as a controller's episode would):
  hold            the drawn start lr, held
  constant x m    the start lr times m, held, for m in 1/16 .. 16
  warmup-decay    10% linear warmup to start x m, then cosine decay, for a few peaks m
  default recipe  the instance set's declared recipe
Every schedule runs through the shared episode loop on the same seed (same batches, dropout and
evaluation points). Selection among schedules is by final validation loss, as a controller that
sees only validation would choose; the test loss of the selection is what is reported.
"""
from __future__ import annotations

import math
from typing import Any

from envs.episode import HoldPlan, SchedulePlan, recipe_plan, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.config import RecipeConfig
from trainers.schedules import recipe_schedule
from trainers.session import Hparams

FORMAT = 2  # bump when what a record holds, or how it is computed, changes (resumed runs recompute)
CONSTANT_MULTIPLIERS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0, 16.0)
WARMUP_DECAY_PEAKS = (1 / 4, 1.0, 4.0)


def _summary(log: dict[str, Any]) -> dict[str, Any]:
    return {"val_loss": log["eval_curve"][-1][1], "test_loss": log["test_loss"], "test_metric": log["test_metric"],
            "diverged": log["diverged"], "lr_first": log["schedule"][0]["lr"], "lr_last": log["schedule"][-1]["lr"]}


def data_fingerprint(cfg, instance: str) -> str:
    """A hash of the records an instance trains, validates and tests on (after the split, the cap
    and decontamination): a change in how data is built changes it even when the config does not.
    Building the records is cheap (no model), so this also stops a bad dataset before any worker starts."""
    import hashlib
    import json

    from trainers.data import task_records

    inst = cfg.instance(instance)
    splits = task_records(inst.dataset, cfg.episode.eval_examples, cfg.episode.test_examples)
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:16]


def record_key(cfg, instance: str) -> dict[str, Any]:
    """What decides an instance's headroom record: a saved record with another key is recomputed."""
    inst = cfg.instance(instance)
    session = cfg.session_for(inst).model_dump(mode="json")
    if session.get("optimizer") == "adamw":
        # added after records were saved, every one of them with AdamW (the only optimizer then): at that
        # value the field leaves them valid (10 recomputed with it were bit-identical to the saved ones)
        del session["optimizer"]
    return {"format": FORMAT, "data": data_fingerprint(cfg, instance), "instance": inst.model_dump(mode="json"),
            "session": session, "episode": cfg.episode.model_dump(mode="json"),
            "bounds": cfg.bounds.model_dump(mode="json"), "default_recipe": cfg.default_recipe.model_dump(mode="json")}


def schedules_from(env: FineTuneEnv, instance: str, seed: int) -> dict[str, Any]:
    """Every open-loop schedule from the seed's drawn start; returns per-schedule summaries."""
    env.evaluate_test = True
    env.reset(seed=seed, options={"instance": instance})
    start = env.session.hparams()
    base_test = env.session.evaluate("test")
    lo, hi = env.cfg.bounds.lr
    total = env.cfg.steps_for(env.cfg.instance(instance))
    runs: dict[str, dict] = {"hold": _summary(run_episode(env, HoldPlan(), instance, seed))}
    for m in CONSTANT_MULTIPLIERS:
        if m == 1.0:
            continue
        h = Hparams(min(max(start.lr * m, lo), hi), start.weight_decay, start.grad_clip)
        runs[f"constant x{m:g}"] = dict(_summary(run_episode(env, HoldPlan(h), instance, seed)), multiplier=m)
    runs["constant x1"] = dict(runs["hold"], multiplier=1.0)
    for m in WARMUP_DECAY_PEAKS:
        recipe = RecipeConfig(lr=min(max(start.lr * m, lo), hi), weight_decay=start.weight_decay,
                              grad_clip=start.grad_clip, warmup_fraction=0.1, decay="cosine")
        plan = SchedulePlan(recipe_schedule(recipe, total, min_lr=lo))
        runs[f"warmup-cosine peak x{m:g}"] = dict(_summary(run_episode(env, plan, instance, seed)), multiplier=m)
    runs["default recipe"] = _summary(run_episode(env, recipe_plan(env, env.cfg.default_recipe, instance),
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


# ---- an absolute grid of constant learning rates, independent of any drawn start ----

LR_GRID = tuple(10 ** (e / 2) for e in range(-10, -3))  # 1e-5, 3.2e-5, ..., 1e-2: half-decade steps


def constant_lr_sweep(env: FineTuneEnv, instance: str, seed: int, lrs=LR_GRID) -> dict[str, Any]:
    """Each lr of the grid held for the whole episode, with the default recipe's weight decay and
    clipping; the seed fixes batches, dropout and evaluation points, not the lr."""
    env.evaluate_test = True
    rec = env.cfg.default_recipe
    runs = {}
    for lr in lrs:
        h = Hparams(lr, rec.weight_decay, rec.grad_clip)
        runs[f"{lr:.3g}"] = dict(_summary(run_episode(env, HoldPlan(h), instance, seed)), lr=lr)
    return {"instance": instance, "seed": seed, "runs": runs}


def best_lr_on_grid(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One instance's best constant lr: the grid point with the lowest validation loss (mean over
    seeds), and a parabola through it and its two neighbours in log10(lr), whose vertex is kept
    only between those neighbours (else the grid point stands)."""
    import numpy as np

    lrs = sorted({v["lr"] for r in records for v in r["runs"].values()})
    def mean_val(lr):
        xs = [v["val_loss"] for r in records for v in r["runs"].values() if v["lr"] == lr]
        xs = [x if math.isfinite(x) else math.inf for x in xs]
        return sum(xs) / len(xs)
    val = [mean_val(lr) for lr in lrs]
    test = [sum(v["test_loss"] for r in records for v in r["runs"].values() if v["lr"] == lr) / len(records)
            for lr in lrs]
    i = int(np.argmin(val))
    refined = lrs[i]
    if 0 < i < len(lrs) - 1 and all(math.isfinite(v) for v in val[i - 1:i + 2]):
        x = np.log10(lrs[i - 1:i + 2])
        a, b, _ = np.polyfit(x, val[i - 1:i + 2], 2)
        if a > 0:
            refined = float(10 ** min(max(-b / (2 * a), x[0]), x[2]))
    return {"n_seeds": len(records), "lrs": lrs, "mean_val_loss": val, "mean_test_loss": test,
            "best_lr_grid": lrs[i], "best_lr_refined": refined, "at_grid_edge": i in (0, len(lrs) - 1)}
