"""Every method a comparison runs, behind one interface (``base.Method``): one module each, and one
line each in ``REGISTRY`` below. Adding a method is a new module and a registry line.

    policy              the learned controller: one run
    default_recipe      the instance set's declared recipe: one run
    hand_schedule       warmup then cosine at the default recipe's lr: one run
    transferred_recipe  one recipe tuned by Optuna on the training instances, applied unchanged: one run
    random_search       random recipes from the shared space, best of the first B
    optuna_tpe          TPE + median pruning, best of the first B finished trials
    schedulefree_adamw, prodigy
                        one-run self-tuning optimizers at their READMEs' defaults
    pbt                 Ray Tune Population Based Training, population P
    range_test          an lr range test (lr_find), then the base recipe at the lr it suggests: one run
    held_start          no control: the drawn start held (the held-out evaluation's third method); for
                        a residual controller, its base recipe from the policy's start, never corrected
    policy_guess        a residual controller from a user's guess at the lr (0.01x-100x the recipe's)
    held_guess          the base recipe from that guess, never corrected: what the user would have run
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from agents.methods.base import Method, MethodContext, RunRecord
from agents.methods.held_start import HeldStartMethod
from agents.methods.pbt import PBTMethod
from agents.methods.policy import PolicyMethod
from agents.methods.range_test import RangeTestMethod
from agents.methods.recipes import RecipeMethod, hand_schedule
from agents.methods.search import SearchMethod
from agents.methods.self_tuning import SelfTuningMethod
from agents.reporting.heldout_report import METHODS as HELDOUT_METHODS
from trainers.config import InstanceSetConfig, RecipeConfig


@dataclass(frozen=True)
class ComparisonSetup:
    """What the registry builds methods from."""

    cfg: InstanceSetConfig
    agent: str  # the agent folder, absolute
    budgets: tuple[int, ...] = (1, 4, 8, 16)  # search budgets in runs
    pbt_populations: tuple[int, ...] = (4,)
    transferred: Optional[RecipeConfig] = None  # None: the transferred recipe is left out


# name -> the method as a comparison runs it (None: not asked for). In the order reports list them.
REGISTRY: dict[str, Callable[[ComparisonSetup], Optional[Method]]] = {
    "policy": lambda s: PolicyMethod(s.agent),
    "default_recipe": lambda s: RecipeMethod("default_recipe", s.cfg.default_recipe),
    "hand_schedule": lambda s: RecipeMethod("hand_schedule", hand_schedule(s.cfg)),
    "transferred_recipe": lambda s: RecipeMethod("transferred_recipe", s.transferred) if s.transferred else None,
    "random_search": lambda s: SearchMethod("random_search", "random", "none", s.budgets),
    "optuna_tpe": lambda s: SearchMethod("optuna_tpe", "tpe", "median", s.budgets),
    "schedulefree_adamw": lambda s: SelfTuningMethod("schedulefree_adamw", s.cfg.default_recipe.grad_clip),
    "prodigy": lambda s: SelfTuningMethod("prodigy", s.cfg.default_recipe.grad_clip),
    "pbt": lambda s: PBTMethod(s.pbt_populations) if s.pbt_populations else None,
    "range_test": lambda s: RangeTestMethod(s.cfg.base_recipe),
    "held_start": lambda s: (PolicyMethod(s.agent, "held_start", act=False, compared=False)
                             if s.cfg.control.residual else HeldStartMethod()),
    "policy_guess": lambda s: (PolicyMethod(s.agent, "policy_guess", "user_guess", compared=False)
                               if s.cfg.control.residual else None),
    "held_guess": lambda s: (PolicyMethod(s.agent, "held_guess", "user_guess", act=False, compared=False)
                             if s.cfg.control.residual else None),
}
HELDOUT = HELDOUT_METHODS  # what agents.evaluate runs: policy, default_recipe, held_start
# and for a residual controller, the rescue of a user's wrong start too (agents/experiments/heldout.py)
HELDOUT_RESCUE = HELDOUT_METHODS + ("policy_guess", "held_guess", "range_test")


def build(names: tuple[str, ...], setup: ComparisonSetup) -> list[Method]:
    return [m for m in (REGISTRY[n](setup) for n in names) if m is not None]


def compared(setup: ComparisonSetup) -> list[Method]:
    """What agents.compare runs: every registered method that is asked for and is a rival."""
    return [m for m in build(tuple(REGISTRY), setup) if m.compared]


__all__ = ["REGISTRY", "HELDOUT", "compared", "ComparisonSetup", "Method", "MethodContext", "RunRecord", "build"]
