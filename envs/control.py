"""The controlled schedule: how a controller's actions become each step's hyperparameters when
``control`` (trainers/config.py ControlConfig) asks for more than the original deltas.

    lr(t) = lr_scale x base_lr(t)        weight decay and clipping likewise, with scales of their own

The base is the recipe's schedule over the instance's budget (residual control) or the start held
(otherwise). An action multiplies the scales (a full lr entry by 2**lr_log2_step, the others by
2**max_log2_step), so a controller that never acts runs its base exactly: with a residual base
and the recipe's start, the recipe itself, step for step.

Schedule actions (``schedule_actions``) add two entries to a box action, and two items to a
discrete menu:
  cooldown  above COOLDOWN_AT: from this step the base falls from its current value toward zero
            at the end of the run as (1 - fraction of the rest done) ** power, never above the base
            itself: warmup-stable-decay's "start the cooldown now", and its shape. The power comes
            from the entry's size: 1 (linear) just above the threshold, 2 at 0.75 (the discrete
            menu's), 4 at 1; the larger, the sooner the lr falls. A base that already decays
            linearly from its peak is changed by powers above 1 only. Once per run.
  rollback  above ROLLBACK_AT: the model and optimizer go back to the snapshot of the best
            validation so far (the environment keeps it); the steps spent are not refunded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from gymnasium import spaces

from trainers.config import HPARAM_NAMES, ActionConfig, ControlConfig, HparamBounds
from trainers.session import Hparams

COOLDOWN_AT = 0.5
ROLLBACK_AT = 0.5
SCHEDULE_MENU = ((0.0, 0.0, 0.0, 0.75, 0.0), (0.0, 0.0, 0.0, 0.0, 1.0))  # a quadratic cooldown; a rollback


def cooldown_power(entry: float) -> Optional[float]:
    """The cooldown's power for an action entry, or None below the threshold: 2 ** (4 (entry - 0.5)),
    from 1 to 4."""
    if entry <= COOLDOWN_AT:
        return None
    return float(2.0 ** ((min(entry, 1.0) - COOLDOWN_AT) * 4.0))


@dataclass(frozen=True)
class Decoded:
    """What one action asks for."""

    log2_scales: np.ndarray  # per hyperparameter, the log2 change of its scale
    cooldown: Optional[float] = None  # the cooldown's power, if it starts now
    rollback: bool = False


@dataclass(frozen=True)
class ControlActions:
    """The action space and its decoding when control adds to the original deltas."""

    action: ActionConfig
    control: ControlConfig

    @property
    def width(self) -> int:
        return len(HPARAM_NAMES) + (2 if self.control.schedule_actions else 0)

    @property
    def menu(self) -> tuple[tuple[float, ...], ...]:
        pad = (0.0, 0.0) if self.control.schedule_actions else ()
        rows = tuple(tuple(float(x) for x in row) + pad for row in self.action.menu)
        return rows + (SCHEDULE_MENU if self.control.schedule_actions else ())

    @property
    def space(self) -> spaces.Space:
        if self.action.mode == "discrete":
            return spaces.Discrete(len(self.menu))
        return spaces.Box(-1.0, 1.0, shape=(self.width,), dtype=np.float32)

    def decode(self, action) -> Decoded:
        if self.action.mode == "discrete":
            a = int(np.asarray(action).reshape(-1)[0])
            if not 0 <= a < len(self.menu):
                raise ValueError(f"discrete action {a} outside the menu of {len(self.menu)}")
            raw = np.asarray(self.menu[a], dtype=np.float64)
        else:
            raw = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
            if raw.shape != (self.width,):
                raise ValueError(f"box action must have {self.width} entries, got shape {raw.shape}")
        steps = np.array([self.control.lr_log2_step] + [self.action.max_log2_step] * (len(HPARAM_NAMES) - 1))
        scales = raw[: len(HPARAM_NAMES)] * steps
        if not self.control.schedule_actions:
            return Decoded(scales)
        return Decoded(scales, cooldown_power(raw[3]), bool(raw[4] > ROLLBACK_AT))

    def describe(self) -> dict:
        """What an agent folder stores so another machine maps actions identically."""
        return {"mode": self.action.mode, "hparams": list(HPARAM_NAMES), "max_log2_step": self.action.max_log2_step,
                "menu": [list(m) for m in self.menu] if self.action.mode == "discrete" else None,
                "control": self.control.model_dump(mode="json", exclude={"recipe", "reference_seeds",
                                                                           "user_guess_fraction"})}


@dataclass
class ControlledSchedule:
    """The per-step hyperparameters of one run under control: a base schedule, the scales the
    controller has set on it, and the cooldown once started. ``hparams_at(step)`` is what a step
    uses; ``act(decoded, step)`` applies a decision taken before ``step``."""

    base: Sequence[Hparams]  # one per step of the run
    bounds: HparamBounds
    scales: np.ndarray = field(default_factory=lambda: np.ones(len(HPARAM_NAMES)))
    cooldown_start: Optional[int] = None
    cooldown_power: float = 1.0

    def __post_init__(self) -> None:
        self.scales = np.asarray(self.scales, dtype=np.float64)
        self.start_scales = self.scales.copy()

    def start_at(self, scales: np.ndarray) -> None:
        """The run's starting scales (clamped): a user's guess, or 1 for the base's own values."""
        self.scales = self.clamped(scales, 0)
        self.start_scales = self.scales.copy()

    def log2_corrections(self) -> list[float]:
        """What the controller has changed since the start, per hyperparameter (log2)."""
        return [float(np.log2(s / s0)) for s, s0 in zip(self.scales, self.start_scales)]

    def recipe_log2_scales(self) -> list[float]:
        """Where the run stands on its base, per hyperparameter (log2; 0 at the base's own values).
        A hyperparameter the base holds at 0 (no weight decay) reads 0: its scale changes nothing."""
        return [float(np.log2(s)) if any(getattr(h, name) > 0 for h in self.base) else 0.0
                for s, name in zip(self.scales, HPARAM_NAMES)]

    def lr_at_bound(self, step: int) -> int:
        """+1 / -1 when the lr scale sits at its upper / lower limit (see ``clamped``), else 0."""
        lo, hi = self.bounds.lr
        top = max(h.lr for h in self.base[min(step, self.total_steps - 1):])
        if self.scales[0] >= hi / top * (1 - 1e-9):
            return 1
        if self.scales[0] <= lo / top * (1 + 1e-9):
            return -1
        return 0

    @property
    def total_steps(self) -> int:
        return len(self.base)

    def act(self, decoded: Decoded, step: int) -> None:
        self.scales = self.clamped(self.scales * 2.0 ** decoded.log2_scales, step)
        if decoded.cooldown is not None and self.cooldown_start is None and step < self.total_steps:
            self.cooldown_start, self.cooldown_power = step, decoded.cooldown

    def clamped(self, scales: np.ndarray, step: int) -> np.ndarray:
        """Scales held where the rest of the run's peak stays inside its bounds: past that,
        actions would pile up unseen (every step clipped) and take as long to undo."""
        out = np.asarray(scales, dtype=np.float64).copy()
        for i, name in enumerate(HPARAM_NAMES):
            lo, hi = getattr(self.bounds, name)
            top = max(getattr(h, name) for h in self.base[min(step, self.total_steps - 1):])
            if top > 0:
                out[i] = min(max(out[i], lo / top), hi / top)
        return out

    def base_lr(self, step: int) -> float:
        """The base's lr at ``step``, after the cooldown if one has started."""
        lr = self.base[step].lr
        if self.cooldown_start is None or step < self.cooldown_start:
            return lr
        start = self.base[self.cooldown_start].lr
        span = max(self.total_steps - self.cooldown_start, 1)
        return min(lr, start * (1.0 - (step - self.cooldown_start) / span) ** self.cooldown_power)

    def hparams_at(self, step: int) -> Hparams:
        b = self.base[step]
        values = {"lr": self.base_lr(step) * self.scales[0], "weight_decay": b.weight_decay * self.scales[1],
                  "grad_clip": b.grad_clip * self.scales[2]}
        if np.all(self.scales == 1.0) and self.cooldown_start is None:
            return b  # no correction: the base itself, bit for bit
        out = {}
        for name in HPARAM_NAMES:
            lo, hi = getattr(self.bounds, name)
            v = values[name]
            out[name] = float(min(max(v, lo), hi)) if (name != "weight_decay" or v > 0) else 0.0
        return Hparams(**out)

    def interval(self, start: int, steps: int) -> list[Hparams]:
        return [self.hparams_at(s) for s in range(start, min(start + steps, self.total_steps))]

    def lr_scale_log2(self) -> float:
        return float(math.log2(self.scales[0]))


def action_map_for(cfg) -> "ActionMap | ControlActions":
    """The action decoding an instance set's environment uses: the original deltas, or control's."""
    from envs.actions import ActionMap

    return ControlActions(cfg.action, cfg.control) if cfg.control.enabled else ActionMap(cfg.action, cfg.bounds)
