"""The one search space of static recipes, shared by Optuna, random search, Ray Tune and PBT.

A recipe is the controller's three knobs frozen for the run (lr, weight decay, clipping
threshold, each log-uniform within the instance set's hard bounds) plus a warmup fraction and a
decay shape. PBT perturbs the first three only: it changes them mid-run, as the controller does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from trainers.config import HPARAM_NAMES, HparamBounds, RecipeConfig

DECAYS = ("constant", "linear", "cosine")
WARMUP_FRACTION = (0.0, 0.3)


@dataclass(frozen=True)
class Dimension:
    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: Optional[tuple[str, ...]] = None


def recipe_space(bounds: HparamBounds) -> tuple[Dimension, ...]:
    return tuple(Dimension(n, *getattr(bounds, n), log=True) for n in HPARAM_NAMES) + (
        Dimension("warmup_fraction", *WARMUP_FRACTION),
        Dimension("decay", choices=DECAYS),
    )


def hparam_space(bounds: HparamBounds) -> tuple[Dimension, ...]:
    """The dimensions a run can change mid-way (PBT's mutations)."""
    return tuple(d for d in recipe_space(bounds) if d.name in HPARAM_NAMES)


def suggest_recipe(trial, bounds: HparamBounds) -> RecipeConfig:
    """An Optuna trial's recipe."""
    values: dict[str, Any] = {}
    for d in recipe_space(bounds):
        values[d.name] = (trial.suggest_categorical(d.name, list(d.choices)) if d.choices
                          else trial.suggest_float(d.name, d.low, d.high, log=d.log))
    return RecipeConfig(**values)


def tune_space(dims: Sequence[Dimension]) -> dict[str, Any]:
    """The same dimensions as Ray Tune sampling domains."""
    from ray import tune

    out: dict[str, Any] = {}
    for d in dims:
        if d.choices:
            out[d.name] = tune.choice(list(d.choices))
        else:
            out[d.name] = tune.loguniform(d.low, d.high) if d.log else tune.uniform(d.low, d.high)
    return out


def recipe_from(config: dict[str, Any]) -> RecipeConfig:
    return RecipeConfig(**{d: config[d] for d in (*HPARAM_NAMES, "warmup_fraction", "decay")})
