"""How much signal a learner of the residual controller gets from a good start (agents.headroom
--residual-probe): why PPO adds nothing after imitation, measured instead of guessed.

On training instances only (nothing here looks at a held-out one), from the recipe's own start and
on the batch seeds training draws (control.reference_seeds), each episode applies one fixed lr
correction at its first decision, 2**k x the recipe's lr for k in PROBE_LOG2, and then holds. Its
return is the paired return PPO learns from: the final validation advantage over the recipe's own
run on the same instance and batches (envs/finetune_env.py), in units of the instance's initial
validation loss. k = 0 is the recipe itself, so its return must be exactly 0.

What it tells (agents/reporting/headroom_report.py writes the table):
  oracle static gain   per instance, the best fixed correction's return (mean over seeds): what a
                       policy that knew the instance, and only corrected the lr once, could earn
                       (chosen on the same runs it is scored on, so flattered by their noise)
  cross-seed gain      the correction that was best on one seed, scored on the other: unflattered
  seed noise           how far two batch seeds disagree on the same correction's return
  explainable share    1 - within-(instance, k) variance / total variance of the returns: the most a
                       critic that knew instance and correction could explain
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agents.experiments.open_loop import run_per_pair
from agents.methods.base import MethodContext
from envs.episode import PolicyPlan, ReferenceRuns, decisions
from trainers.config import ConfigError, InstanceSetConfig

FORMAT = 1
PROBE_LOG2 = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)  # lr x 1/4 .. x 4 on the recipe's schedule
_ENVS: dict[tuple[int, str], Any] = {}  # one environment per worker context (its engines are kept)


def check_probe_config(cfg: InstanceSetConfig) -> None:
    c = cfg.control
    if not (c.residual and c.reward == "paired"):
        raise ConfigError(f"--residual-probe: instance set {cfg.name!r} needs control.residual: true and "
                          "control.reward: paired (e.g. smollm2_wide_anchored)")


def default_instances(cfg: InstanceSetConfig, every: int = 6) -> list[str]:
    """Every ``every``-th training instance, in the set's order: families and budgets spread out."""
    return [i.name for i in cfg.train[::every]]


class FirstCorrection:
    """A policy that corrects the lr scale by 2**log2 at its first decision and then holds."""

    def __init__(self, log2: float, lr_log2_step: float, width: int) -> None:
        self.first = np.zeros(width, dtype=np.float32)
        self.first[0] = log2 / lr_log2_step
        self.calls = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.first if self.calls == 1 else np.zeros_like(self.first)


def _env(ctx: MethodContext, references: str):
    from envs.finetune_env import FineTuneEnv

    key = (id(ctx), references)
    if key not in _ENVS:
        _ENVS[key] = FineTuneEnv(ctx.cfg, split="all", evaluate_test=True, references=ReferenceRuns(references))
    return _ENVS[key]


def probe_pair(ctx: MethodContext, instance: str, seed: int, references: str) -> dict[str, Any]:
    """Every correction of PROBE_LOG2 on one instance and batch seed, from the recipe's start."""
    env = _env(ctx, references)
    step = env.cfg.control.lr_log2_step
    if max(abs(k) for k in PROBE_LOG2) > step + 1e-12:
        raise ConfigError(f"--residual-probe: control.lr_log2_step {step} is under the probe's largest correction")
    width = env.action_map.width
    runs = {}
    for k in PROBE_LOG2:
        ret, last = 0.0, None
        for last in decisions(env, PolicyPlan(FirstCorrection(k, step, width), start_from="recipe"), instance, seed):
            ret += last.reward
        assert last is not None and env.reference is not None  # the paired reward, not plain improvement
        log = last.info["episode_log"]
        runs[f"{k:+g}"] = {"log2": k, "paired_return": ret, "val_loss": log["eval_curve"][-1][1],
                           "test_loss": log["test_loss"], "diverged": log["diverged"],
                           "lr_first": log["schedule"][0]["lr"]}
    return {"instance": instance, "seed": seed, "initial_eval_loss": log["initial_eval_loss"], "runs": runs}


def residual_probe(cfg: InstanceSetConfig, names: list[str], seeds: int, folder: Path, pool: dict,
                   references_from: Optional[Path] = None) -> dict[str, Any]:
    """Run (resumably) and summarise. ``references_from``: a folder of the recipe's runs to copy
    first (an agent folder's reference_runs; each is used only if its key is this run's)."""
    import functools

    from agents.learners.training_run import seed_reference_runs

    check_probe_config(cfg)
    trained = {i.name for i in cfg.train}
    for n in names:
        if n not in trained:
            raise ConfigError(f"--instances {n}: not a training instance; the probe looks at training instances only")
    if seeds > cfg.control.reference_seeds:
        raise ConfigError(f"--seeds {seeds}: training draws {cfg.control.reference_seeds} batch seeds "
                          "(control.reference_seeds); probe those")
    references = folder / "reference_runs"
    if references_from is not None:
        seed_reference_runs(references_from, references)
    extra = {"format": FORMAT, "probe_log2": list(PROBE_LOG2), "control": cfg.control.model_dump(mode="json")}
    work = functools.partial(probe_pair, references=str(references))
    records = run_per_pair(cfg, names, seeds, folder, "residual_probe", extra, work, pool)
    runs = [records[(n, s)] for n in names for s in range(seeds)]
    return {"instances": names, "probe_log2": list(PROBE_LOG2), "summary": summarise(runs), "runs": runs}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Oracle static gain per instance, seed noise, and the share of the returns' variance that
    instance and correction explain (see the module docstring)."""
    from agents.reporting.statistics import instance_bootstrap_iqm

    names = list(dict.fromkeys(r["instance"] for r in runs))
    ks = [k for k in PROBE_LOG2 if k != 0.0]
    ret = {(r["instance"], r["seed"], v["log2"]): v["paired_return"] for r in runs for v in r["runs"].values()}
    seeds = sorted({r["seed"] for r in runs})
    per_instance = {}
    for n in names:
        means = {k: float(np.mean([ret[n, s, k] for s in seeds])) for k in ks}
        best = max(means, key=means.get)
        per_seed_best = [max(ks, key=lambda k: ret[n, s, k]) for s in seeds]
        per_instance[n] = {"mean_return": {f"{k:+g}": means[k] for k in ks}, "best_log2": best,
                           "oracle_gain": max(means[best], 0.0), "best_log2_per_seed": per_seed_best,
                           "recipe_return": [ret[n, s, 0.0] for s in seeds]}
    cells = np.array([[ret[n, s, k] for s in seeds] for n in names for k in ks])  # (instance x k) x seeds
    finite = np.isfinite(cells).all(axis=1)
    cells = cells[finite]
    total = float(np.var(cells)) if cells.size else math.nan
    within = float(np.mean(np.var(cells, axis=1))) if cells.size else math.nan
    if len(seeds) > 1:  # the correction chosen on one seed, scored on another: no selection bias
        for n, p in per_instance.items():
            picked = [max(ks, key=lambda k: ret[n, s, k]) for s in seeds]
            p["cross_seed_gain"] = float(np.mean([ret[n, t, picked[i]] for i, s in enumerate(seeds)
                                                  for t in seeds if t != s]))
    gains = {n: p["oracle_gain"] for n, p in per_instance.items()}
    cross = {n: p["cross_seed_gain"] for n, p in per_instance.items() if "cross_seed_gain" in p}
    point, lo, hi = instance_bootstrap_iqm(gains) if len(gains) > 1 else (math.nan, math.nan, math.nan)
    same_side = [np.sign(p["best_log2_per_seed"][0]) == np.sign(p["best_log2_per_seed"][-1]) for p in per_instance.values()]
    return {
        "per_instance": per_instance,
        "oracle_gain_iqm": point, "oracle_gain_ci95": [lo, hi],
        "oracle_gain_median": float(np.median(list(gains.values()))) if gains else math.nan,
        "cross_seed_gain_median": float(np.median(list(cross.values()))) if cross else math.nan,
        "cross_seed_gain_mean": float(np.mean(list(cross.values()))) if cross else math.nan,
        "seed_noise_sd": math.sqrt(within) if cells.size else math.nan,
        "return_sd": math.sqrt(total) if cells.size else math.nan,
        "explainable_share": 1.0 - within / total if cells.size and total > 0 else math.nan,
        "best_direction_agrees_across_seeds": float(np.mean(same_side)) if same_side else math.nan,
        "recipe_return_max_abs": max(abs(x) for p in per_instance.values() for x in p["recipe_return"]),
        "interval": ("oracle gain: IQM over instances of each one's best mean return (floored at 0, the recipe's); "
                     "95% percentile interval from 5,000 bootstrap resamples of the instances"),
    }
