"""The best constant lr of every instance on an absolute grid (agents.headroom --lr-grid): how far
apart the instances' best static learning rates lie, and the targets imitation warm-starts PPO
from. Each lr of the grid is held for the whole episode with the default recipe's weight decay
and clipping; records are saved per instance x seed through the experiment runner."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from agents.experiments.open_loop import run_per_pair, schedule_summary
from agents.methods.base import MethodContext
from envs.episode import ConstantPlan, run_episode
from trainers.config import InstanceSetConfig
from trainers.session import Hparams

LR_GRID = tuple(10 ** (e / 2) for e in range(-10, -3))  # 1e-5, 3.2e-5, ..., 1e-2: half-decade steps


def constant_lr_sweep(ctx: MethodContext, instance: str, seed: int, lrs=LR_GRID) -> dict[str, Any]:
    """Each lr of the grid held for the whole episode, with the default recipe's weight decay and
    clipping; the seed fixes batches, dropout and evaluation points, not the lr."""
    env = ctx.env()
    rec = env.cfg.default_recipe
    runs = {}
    for lr in lrs:
        h = Hparams(lr, rec.weight_decay, rec.grad_clip)
        runs[f"{lr:.3g}"] = dict(schedule_summary(run_episode(env, ConstantPlan(h), instance, seed)), lr=lr)
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


def lr_grid(cfg: InstanceSetConfig, names: list[str], seeds: int, folder: Path, pool: dict) -> dict[str, Any]:
    rec = cfg.default_recipe
    extra = {"lr_grid": list(LR_GRID), "weight_decay": rec.weight_decay, "grad_clip": rec.grad_clip}
    records = run_per_pair(cfg, names, seeds, folder, "lr_grid", extra, constant_lr_sweep, pool)
    summary = {n: best_lr_on_grid([records[(n, s)] for s in range(seeds)]) for n in names}
    train = {i.name for i in cfg.train}
    for n, s in summary.items():
        s["split"] = "train" if n in train else "heldout"
    refined = {n: s["best_lr_refined"] for n, s in summary.items()}
    grid = {n: s["best_lr_grid"] for n, s in summary.items()}
    return {"lr_grid": list(LR_GRID), "selection": "lowest final validation loss, mean over seeds",
            "spread_grid": max(grid.values()) / min(grid.values()),
            "spread_refined": max(refined.values()) / min(refined.values()),
            "instances": summary, "runs": [records[(n, s)] for n in names for s in range(seeds)]}
