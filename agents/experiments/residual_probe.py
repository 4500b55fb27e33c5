"""How much signal a learner of the residual controller gets from a good start (agents.headroom
--residual-probe): why PPO adds nothing after imitation, measured instead of guessed.

On training instances only (nothing here looks at a held-out one), from the recipe's own start and
on the batch seeds training draws (control.reference_seeds), each episode applies one fixed lr
correction at its first decision, 2**k x the recipe's lr for k in PROBE_LOG2, and then holds. Its
return is the paired return PPO learns from: the final validation advantage over the recipe's own
run on the same instance and batches (envs/finetune_env.py), in units of the instance's initial
validation loss. k = 0 is the recipe itself, so its return must be exactly 0.

What it tells (agents/reporting/headroom_report.py writes the table):
  cross-seed gain      per instance, the correction that was best on one seed (the recipe's k = 0
                       among the candidates), scored on the other seeds: what knowing the instance
                       is worth, unflattered by the noise it was chosen on
  oracle static gain   the best correction's mean return, chosen on the runs it is scored on (>= 0)
  seed noise           the sd of one correction's return across batch seeds (ddof 1)
  explainable share    1 - seed-noise variance / total variance of the returns: the most a critic
                       that knew instance and correction could explain (about 0 on pure noise)
  correction share     the same within instances (each instance's mean removed): how much of what
                       varies inside an instance the correction decides
  target               per instance, the peak of a parabola through its mean returns against k: the
                       correction --imitate <this probe> teaches (agents/learners/imitation.py)
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
    """What the probe needs, checked before any work: a residual controller rewarded against its
    recipe, box actions, and a full lr action at least as large as the probe's largest correction."""
    c = cfg.control
    if not (c.residual and c.reward == "paired"):
        raise ConfigError(f"--residual-probe: instance set {cfg.name!r} needs control.residual: true and "
                          "control.reward: paired (e.g. smollm2_wide_anchored)")
    if cfg.action.mode != "box":
        raise ConfigError(f"--residual-probe: instance set {cfg.name!r} has action.mode {cfg.action.mode!r}; "
                          "the probe sets the lr entry of a box action")
    if max(abs(k) for k in PROBE_LOG2) > c.lr_log2_step + 1e-12:
        raise ConfigError(f"--residual-probe: control.lr_log2_step {c.lr_log2_step} of {cfg.name!r} is under the "
                          f"probe's largest correction ({max(abs(k) for k in PROBE_LOG2):g})")


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
    if cfg.control.recipe is None:  # else the recipe is in control already
        extra["base_recipe"] = cfg.base_recipe.model_dump(mode="json")
    work = functools.partial(probe_pair, references=str(references))
    records = run_per_pair(cfg, names, seeds, folder, "residual_probe", extra, work, pool)
    runs = [records[(n, s)] for n in names for s in range(seeds)]
    return {"instances": names, "probe_log2": list(PROBE_LOG2), "summary": summarise(runs), "runs": runs}


def smoothed_target(means: dict[float, float], diverged: set[float]) -> float:
    """The lr correction (log2) imitation aims for on one instance: the peak of a parabola fitted
    through the mean returns against k (the recipe's k = 0 at 0 included), over the ks around 0
    that did not diverge; 0 when no correction beat the recipe on average. Less of a lottery than
    the best of a few noisy means (a parabola fits every point)."""
    ks = sorted(set(means) | {0.0})
    lo = max([k for k in ks if k < 0 and k in diverged], default=min(ks) - 1)
    hi = min([k for k in ks if k > 0 and k in diverged], default=max(ks) + 1)
    kept = [k for k in ks if lo < k < hi]
    if max(means.get(k, 0.0) for k in kept) <= 0.0 or len(kept) < 3:
        return 0.0
    y = [0.0 if k == 0.0 else means[k] for k in kept]
    a, b, c = np.polyfit(kept, y, 2)
    grid = np.linspace(min(kept), max(kept), 401)
    fitted = a * grid**2 + b * grid + c
    best = float(grid[int(np.argmax(fitted))])
    return best if fitted.max() > c else 0.0


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per instance: the mean return of each correction, the best (the recipe's k = 0 a candidate
    too), the same chosen on one seed and scored on another, and imitation's smoothed target.
    Across instances: the seeds' noise and the share of the returns' variance that instance and
    correction explain, from cells with no diverged run (a divergence's reward is a fixed penalty,
    not an advantage), with unbiased (ddof 1) variances so that pure noise explains about 0."""
    from agents.reporting.statistics import instance_bootstrap_iqm

    names = list(dict.fromkeys(r["instance"] for r in runs))
    ks = [k for k in PROBE_LOG2 if k != 0.0]
    cand = [0.0] + ks
    ret = {(r["instance"], r["seed"], v["log2"]): v["paired_return"] for r in runs for v in r["runs"].values()}
    div = {(r["instance"], r["seed"], v["log2"]) for r in runs for v in r["runs"].values() if v["diverged"]}
    seeds = sorted({r["seed"] for r in runs})
    per_instance = {}
    for n in names:
        means = {k: float(np.mean([ret[n, s, k] for s in seeds])) for k in cand}
        best = max(cand, key=means.get)
        diverged = {k for k in ks if any((n, s, k) in div for s in seeds)}
        p = {"mean_return": {f"{k:+g}": means[k] for k in ks}, "best_log2": best, "oracle_gain": means[best],
             "best_log2_per_seed": [max(cand, key=lambda k: ret[n, s, k]) for s in seeds],
             "target_log2": smoothed_target({k: means[k] for k in ks}, diverged),
             "diverged_log2": sorted(diverged), "recipe_return": [ret[n, s, 0.0] for s in seeds]}
        if len(seeds) > 1:  # the correction chosen on one seed, scored on the others: no selection bias
            p["cross_seed_gain"] = float(np.mean([ret[n, t, p["best_log2_per_seed"][i]]
                                                  for i, s in enumerate(seeds) for t in seeds if t != s]))
        per_instance[n] = p
    clean = [(n, k) for n in names for k in ks if all((n, s, k) not in div for s in seeds)]
    cells = np.array([[ret[n, s, k] for s in seeds] for n, k in clean]).reshape(len(clean), len(seeds))
    noise_var = total_var = within_instance_var = math.nan
    if len(seeds) > 1 and len(clean) > 1:
        noise_var = float(np.mean(np.var(cells, axis=1, ddof=1)))
        total_var = float(np.var(cells, ddof=1))
        inst = np.array([n for n, _ in clean])
        centred = np.concatenate([cells[inst == n] - cells[inst == n].mean() for n in names if (inst == n).any()])
        within_instance_var = float((centred**2).sum() / (centred.size - len(set(inst))))
    gains = {n: p["oracle_gain"] for n, p in per_instance.items()}
    cross = {n: p["cross_seed_gain"] for n, p in per_instance.items() if "cross_seed_gain" in p}
    point, lo, hi = instance_bootstrap_iqm(gains) if len(gains) > 1 else (math.nan, math.nan, math.nan)
    agree = [len({np.sign(k) for k in p["best_log2_per_seed"]}) == 1 for p in per_instance.values()]
    share = lambda v: 1.0 - noise_var / v if v and v > 0 else math.nan  # noqa: E731
    return {
        "per_instance": per_instance,
        "cross_seed_gain_median": float(np.median(list(cross.values()))) if cross else math.nan,
        "cross_seed_gain_mean": float(np.mean(list(cross.values()))) if cross else math.nan,
        "oracle_gain_iqm": point, "oracle_gain_ci95": [lo, hi],
        "oracle_gain_median": float(np.median(list(gains.values()))) if gains else math.nan,
        "seed_noise_sd": math.sqrt(noise_var) if noise_var == noise_var else math.nan,
        "return_sd": math.sqrt(total_var) if total_var == total_var else math.nan,
        "explainable_share": share(total_var),
        "correction_share_within_instance": share(within_instance_var),
        "best_direction_agrees_across_seeds": float(np.mean(agree)) if len(seeds) > 1 else math.nan,
        "cells_with_a_divergence": len(names) * len(ks) - len(clean),
        "recipe_return_max_abs": max(abs(x) for p in per_instance.values() for x in p["recipe_return"]),
        "interval": ("oracle gain: IQM over instances of each one's best mean return (the recipe's 0 a candidate, "
                     "so it is >= 0 and flattered by noise); 95% percentile interval from 5,000 bootstrap resamples "
                     "of the instances"),
    }


def probe_and_write(cfg: InstanceSetConfig, instances: Optional[list[str]], every: int, seeds: Optional[int],
                    out: Path, pool: dict, references_from: Optional[str], command: str, as_json: bool) -> dict[str, Any]:
    """agents.headroom --residual-probe: check, run (resumably), write <config>_residual_probe.json,
    .md and .png under ``out``, and print the table (or the summary as JSON)."""
    import json
    import time

    from agents.reporting.headroom_report import write_probe_outputs
    from trainers.atomic_files import write_json_atomic
    from agents.experiments.runner import provenance

    refs = Path(references_from) if references_from else None
    if refs is not None and not refs.is_dir():
        raise ConfigError(f"--reference-runs-from {refs}: not a folder")
    seeds = seeds or cfg.control.reference_seeds
    names = instances or default_instances(cfg, every)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    t0 = time.time()
    name = f"{cfg.name}_residual_probe"
    found = residual_probe(cfg, names, seeds, out / name, pool, refs)
    result = {"config": cfg.name, "base_recipe": cfg.base_recipe.model_dump(mode="json"),
              **provenance(command, t0, out / name / "per_run", names, seeds), "seeds": list(range(seeds)), **found}
    write_json_atomic(out / f"{name}.json", result)
    write_probe_outputs(out, name, result)
    if as_json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "machine")}))
    else:
        print((out / f"{name}.md").read_text())
    return result
