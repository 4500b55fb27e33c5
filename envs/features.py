"""The observation: a fixed-size, normalised summary of where a fine-tuning episode stands."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

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


# ---------------------------------------------------------------- the scale-free observation
# Signals that mean the same on a 1-layer tail at loss 4 and a LoRA adapter at loss 0.3 (what
# LHOPT found transfers across tasks), the controller's own corrections, and the run's context.
# The controller is not told the lr itself, nor (in this kind) how far its start is from its
# recipe's: a user's wrong guess looks like the recipe's own start until the run's signals say
# otherwise. The anchored kind below adds that distance.
SCALE_FREE_FEATURES = (
    "progress",
    "lr_at_bound",  # +1 / -1: the lr scale is at its upper / lower limit (the hard bounds), else 0
    "lr_scale_log2",  # the controller's correction since the start (0: as it started)
    "weight_decay_scale_log2",
    "grad_clip_scale_log2",
    "base_lr_fraction",  # the base's lr now over its peak: where the recipe's schedule stands
    "cooldown_started",
    "train_loss_rel",  # the interval's mean training loss over the initial validation loss
    "train_loss_slope_t",  # the loss's slope over the interval over its standard error (a t statistic), log-compressed
    "update_ratio_log10",  # |weights after - before| / |weights before| over the interval
    "update_cosine",  # cosine of this interval's weight change with the previous one's
    "grad_norm_log_rel",  # log10 of the interval's mean gradient norm over the first interval's
    "fraction_clipped",
    "eval_loss_rel",
    "last_eval_change_rel",
    "gap_to_best_rel",  # validation loss now minus the best so far, over the initial loss
    "ctx_log10_trainable_params",
    "ctx_lora",
    "ctx_log2_lora_rank",
    "ctx_log2_effective_batch",
    "ctx_log10_budget",
    "ctx_log10_train_examples",
)


# scale_free_anchored: the same, and where the run stands against its recipe. A residual
# controller carries its recipe and is told the run's start, so in deployment it knows how far a
# user's guess sits from the recipe; without this, a guess-start episode's return is set by a
# number the controller cannot see, and its critic learns noise (issue 24's diagnosis).
ANCHOR_FEATURES = (
    "lr_vs_recipe_log2",  # log2 of the run's lr scale on the recipe's schedule (0: the recipe's own lr)
    "weight_decay_vs_recipe_log2",
    "grad_clip_vs_recipe_log2",
)
SCALE_FREE_ANCHORED_FEATURES = SCALE_FREE_FEATURES + ANCHOR_FEATURES


def is_scale_free(kind: str) -> bool:
    """Whether a ``control.features`` kind builds a scale-free observation (watches the weights)."""
    return kind in ("scale_free", "scale_free_anchored")


def feature_names(kind: str) -> tuple[str, ...]:
    """The observation a ``control.features`` kind builds."""
    return {"scale_free": SCALE_FREE_FEATURES, "scale_free_anchored": SCALE_FREE_ANCHORED_FEATURES}.get(
        kind, FEATURE_NAMES)


@dataclass(frozen=True)
class RunContext:
    """What a practitioner knows about a run before it starts, as the controller sees it."""

    trainable_params: int
    lora_rank: int  # 0: the layers' own weights train
    effective_batch: int  # examples per optimizer step (micro-batch x accumulation)
    budget: int  # optimizer steps
    train_examples: int

    def features(self) -> list[float]:
        return [math.log10(max(self.trainable_params, 1)), float(self.lora_rank > 0),
                math.log2(self.lora_rank) if self.lora_rank > 0 else 0.0, math.log2(max(self.effective_batch, 1)),
                math.log10(max(self.budget, 1)), math.log10(max(self.train_examples, 1))]


@dataclass(frozen=True)
class UpdateStats:
    """How the trainable weights moved over the last decision interval."""

    ratio: float = 0.0  # |delta| / |weights before|
    cosine: float = 0.0  # with the interval before's delta (0 when there was none)


def weight_update(before: list, now: Sequence, last_delta: Optional[list]) -> tuple[UpdateStats, list]:
    """The interval's weight change over the weights, and its cosine with the change before
    (``last_delta``); ``before`` becomes the change (before - now, in place) and is returned with
    the stats, to be the next call's ``last_delta``. One code for the environment and the
    controllers in a user's loop, so both observe the same numbers."""
    import torch

    def norm(ts) -> float:
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in ts])))

    size = norm(before)
    torch._foreach_sub_(before, list(now))
    change = norm(before)
    cos = 0.0
    if last_delta is not None and change > 0:
        dot = float(sum(torch.sum(a * b) for a, b in zip(before, last_delta)))
        last = norm(last_delta)
        cos = dot / (change * last) if last > 0 else 0.0
    return UpdateStats(change / max(size, 1e-12), cos), before


def _t_slope(y: np.ndarray) -> float:
    """The least-squares slope of ``y`` over its standard error: how sure the trend is, whatever
    the loss's scale or noise; sign(t) log(1 + |t|)."""
    n = len(y)
    if n < 3:
        return 0.0
    x = np.arange(n, dtype=np.float64)
    x -= x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    resid = y - y.mean() - slope * x
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / float((x * x).sum()))
    t = slope / se if se > 0 else 0.0
    return math.copysign(math.log1p(abs(t)), t)  # a clear trend reads as clear at t = 5 or 50


def observe_scale_free(
    progress: float,
    lr_at_bound: int,
    log2_scales: Sequence[float],
    base_lr_fraction: float,
    cooldown_started: bool,
    steps: Sequence[StepMetrics],
    update: UpdateStats,
    first_grad_norm: Optional[float],
    eval_loss: float,
    initial_eval_loss: float,
    last_eval_change: float,
    best_eval_loss: float,
    context: RunContext,
    recipe_log2_scales: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """SCALE_FREE_FEATURES, in order, then ANCHOR_FEATURES when ``recipe_log2_scales`` (the
    schedule's log2 scales on the recipe) is given; clipped to [OBS_LOW, OBS_HIGH]."""
    ref = max(initial_eval_loss, 1e-8)
    v = [progress, float(lr_at_bound), *log2_scales, base_lr_fraction, float(cooldown_started)]
    if steps:
        loss = np.array([s.loss for s in steps], dtype=np.float64)
        gn = np.array([s.grad_norm for s in steps], dtype=np.float64)
        mean_gn = float(gn.mean())
        v += [float(loss.mean()) / ref, _t_slope(loss)]
        v += [math.log10(max(update.ratio, 1e-12)), update.cosine]
        v += [math.log10(max(mean_gn, 1e-12) / max(first_grad_norm or mean_gn, 1e-12)),
              float(np.mean([s.clipped for s in steps]))]
    else:
        v += [1.0, 0.0, math.log10(1e-12), 0.0, 0.0, 0.0]  # before any step: nothing has moved
    v += [eval_loss / ref, last_eval_change / ref, (eval_loss - best_eval_loss) / ref]
    v += context.features()
    if recipe_log2_scales is not None:
        v += [float(x) for x in recipe_log2_scales]
    out = np.nan_to_num(np.asarray(v, dtype=np.float64), nan=OBS_HIGH, posinf=OBS_HIGH, neginf=OBS_LOW)
    return np.clip(out, OBS_LOW, OBS_HIGH).astype(np.float32)
