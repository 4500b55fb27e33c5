"""The one search space of static recipes, shared by Optuna, random search, Ray Tune and PBT.

A recipe is the controller's three knobs frozen for the run (lr, weight decay, clipping
threshold) plus a warmup fraction and a decay shape. The three knobs are drawn log-uniformly from
the instance's starting ranges (``init_lr``, ...): the ranges the controller's and PBT's starts
are drawn from, so no method searches a wider or narrower prior than another. PBT perturbs the
first three only, within the hard bounds: it changes them mid-run, as the controller does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from trainers.config import HPARAM_NAMES, HparamBounds, InstanceSpec, RecipeConfig

DECAYS = ("constant", "linear", "cosine")
WARMUP_FRACTION = (0.0, 0.3)


@dataclass(frozen=True)
class Dimension:
    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: Optional[tuple[str, ...]] = None


def starting_ranges(bounds: HparamBounds, inst: InstanceSpec) -> dict[str, tuple[float, float]]:
    """The instance's starting range of each knob, inside the hard bounds."""
    out = {}
    for n in HPARAM_NAMES:
        lo, hi = getattr(bounds, n)
        a, b = getattr(inst, f"init_{n}")
        out[n] = (min(max(a, lo), hi), min(max(b, lo), hi))
    return out


def recipe_space(bounds: HparamBounds, inst: Optional[InstanceSpec | Sequence[InstanceSpec]] = None
                 ) -> tuple[Dimension, ...]:
    """A recipe's dimensions; with an instance, the three knobs span its starting ranges (a
    search's prior); with several, the span of theirs (a recipe tuned on many instances at once);
    without one, the hard bounds (PBT's mutations)."""
    if inst is None:
        ranges = {n: getattr(bounds, n) for n in HPARAM_NAMES}
    else:
        each = [starting_ranges(bounds, i) for i in ([inst] if isinstance(inst, InstanceSpec) else inst)]
        ranges = {n: (min(r[n][0] for r in each), max(r[n][1] for r in each)) for n in HPARAM_NAMES}
    return tuple(Dimension(n, *ranges[n], log=True) for n in HPARAM_NAMES) + (
        Dimension("warmup_fraction", *WARMUP_FRACTION),
        Dimension("decay", choices=DECAYS),
    )


def hparam_space(bounds: HparamBounds) -> tuple[Dimension, ...]:
    """The dimensions a run can change mid-way (PBT's mutations)."""
    return tuple(d for d in recipe_space(bounds) if d.name in HPARAM_NAMES)


def suggest_recipe(trial, bounds: HparamBounds, inst: InstanceSpec | Sequence[InstanceSpec]) -> RecipeConfig:
    """An Optuna trial's recipe, its knobs drawn from the instance's starting ranges."""
    values: dict[str, Any] = {}
    for d in recipe_space(bounds, inst):
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
