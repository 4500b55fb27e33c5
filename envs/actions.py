"""Actions -> hyperparameters: multiplicative deltas on a log2 scale, clipped to hard bounds.

Box actions give one delta per hyperparameter in [-1, 1]; Discrete actions index a menu of joint
deltas. Either way a full step multiplies a hyperparameter by 2**max_log2_step at most.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from trainers.config import HPARAM_NAMES, ActionConfig, HparamBounds
from trainers.session import Hparams


@dataclass(frozen=True)
class ActionMap:
    cfg: ActionConfig
    bounds: HparamBounds

    @property
    def space(self) -> spaces.Space:
        if self.cfg.mode == "discrete":
            return spaces.Discrete(len(self.cfg.menu))
        return spaces.Box(-1.0, 1.0, shape=(len(HPARAM_NAMES),), dtype=np.float32)

    def log2_deltas(self, action) -> np.ndarray:
        """The log2 multiplier per hyperparameter that this action asks for."""
        if self.cfg.mode == "discrete":
            a = int(np.asarray(action).reshape(-1)[0])
            if not 0 <= a < len(self.cfg.menu):
                raise ValueError(f"discrete action {a} outside the menu of {len(self.cfg.menu)}")
            raw = np.asarray(self.cfg.menu[a], dtype=np.float64)
        else:
            raw = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
            if raw.shape != (len(HPARAM_NAMES),):
                raise ValueError(f"box action must have {len(HPARAM_NAMES)} entries, got shape {raw.shape}")
        return raw * self.cfg.max_log2_step

    def apply(self, action, current: Hparams) -> Hparams:
        d = self.log2_deltas(action)
        new = {}
        for i, name in enumerate(HPARAM_NAMES):
            lo, hi = getattr(self.bounds, name)
            new[name] = float(np.clip(getattr(current, name) * 2.0 ** d[i], lo, hi))
        return Hparams(**new)

    def clip(self, h: Hparams) -> Hparams:
        """Hold hyperparameters inside the hard bounds."""
        return Hparams(**{n: float(np.clip(getattr(h, n), *getattr(self.bounds, n))) for n in HPARAM_NAMES})

    def describe(self) -> dict:
        """What an agent folder stores so another machine maps actions identically."""
        return {
            "mode": self.cfg.mode,
            "hparams": list(HPARAM_NAMES),
            "max_log2_step": self.cfg.max_log2_step,
            "menu": [list(m) for m in self.cfg.menu] if self.cfg.mode == "discrete" else None,
            "bounds": {n: list(getattr(self.bounds, n)) for n in HPARAM_NAMES},
        }
