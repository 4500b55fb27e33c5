"""The observation: a fixed-size, normalised summary of where a fine-tuning episode stands."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from trainers.config import HPARAM_NAMES, HparamBounds
from trainers.session import Hparams, StepMetrics

FEATURE_NAMES = (
    "progress",
    "lr_pos",
    "weight_decay_pos",
    "grad_clip_pos",
    "train_loss_last_rel",
    "train_loss_mean_rel",
    "train_loss_slope",
    "train_loss_spread",
    "grad_norm_mean_log",
    "grad_norm_max_log",
    "grad_norm_slope",
    "fraction_clipped",
    "eval_loss_rel",
    "last_eval_change",
)
OBS_LOW, OBS_HIGH = -10.0, 10.0


def _pos(value: float, lo: float, hi: float) -> float:
    """Where a value sits between its bounds on a log scale, in [-1, 1] (a value outside them, as a
    self-tuning optimizer's own lr or zero weight decay can be, counts as at the nearer bound)."""
    if hi <= lo:
        return 0.0
    value = min(max(value, lo), hi)
    return 2.0 * (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo)) - 1.0


def _slope(y: np.ndarray) -> float:
    if len(y) < 2:
        return 0.0
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def observe(
    progress: float,
    hparams: Hparams,
    bounds: HparamBounds,
    steps: Sequence[StepMetrics],
    eval_loss: float,
    initial_eval_loss: float,
    last_eval_change: float,
) -> np.ndarray:
    """Losses are relative to the episode's initial eval loss; slopes are per interval."""
    ref = max(initial_eval_loss, 1e-8)
    v = np.zeros(len(FEATURE_NAMES), dtype=np.float64)
    v[0] = progress
    for i, name in enumerate(HPARAM_NAMES):
        v[1 + i] = _pos(getattr(hparams, name), *getattr(bounds, name))
    if steps:
        loss = np.array([s.loss for s in steps], dtype=np.float64)
        gn = np.array([s.grad_norm for s in steps], dtype=np.float64)
        n = len(steps)
        v[4] = loss[-1] / ref
        v[5] = loss.mean() / ref
        v[6] = _slope(loss) * n / ref
        v[7] = loss.std() / ref
        lgn = np.log10(np.maximum(gn, 1e-8))
        v[8] = lgn.mean()
        v[9] = lgn.max()
        v[10] = _slope(lgn) * n
        v[11] = float(np.mean([s.clipped for s in steps]))
    else:
        v[4] = v[5] = 1.0
    v[12] = eval_loss / ref
    v[13] = last_eval_change / ref
    v = np.nan_to_num(v, nan=OBS_HIGH, posinf=OBS_HIGH, neginf=OBS_LOW)
    return np.clip(v, OBS_LOW, OBS_HIGH).astype(np.float32)
