"""The held-out evaluation of a residual controller (envs/control.py), beyond the table every
controller gets: does it beat the recipe it corrects, apart on the instances that extrapolate, and
does it rescue a user's wrong start?

  held_start    the base recipe from its own lr (the controller's start, never corrected)
  policy_guess  the controller from a user's guess (the recipe's lr x 0.01..100, drawn from the seed)
  held_guess    the base recipe from that guess, never corrected: the floor
  range_test    an lr range test, then the base recipe at the lr it suggests (its steps counted)

A rescue's gap is its test loss over the recipe's own (held_start on the same instance and seed),
minus 1; the goal is a median gap of at most 2%.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from agents.reporting.statistics import instance_level_intervals, sign_by_both_intervals

RESCUE = ("policy_guess", "held_guess", "range_test")
GAP_GOAL = 0.02
REPS = 5000


def _by_pair(runs: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["instance"], r["seed"]): r for r in runs}


def paired_intervals(runs: dict[str, list[dict]], a: str, b: str, keep: Optional[Iterable[str]] = None) -> Optional[dict]:
    """a − b test loss, paired on (instance, seed), at the instance level (two intervals; 'better'
    needs both below 0). ``keep``: only these instances. None when there are no pairs."""
    other = _by_pair(runs.get(b, []))
    per_inst: dict[str, list[float]] = {}
    for r in runs.get(a, []):
        if (keep is None or r["instance"] in keep) and (r["instance"], r["seed"]) in other:
            per_inst.setdefault(r["instance"], []).append(r["test_loss"] - other[(r["instance"], r["seed"])]["test_loss"])
    if not per_inst:
        return None
    if len(per_inst) < 2:
        v = per_inst[next(iter(per_inst))]
        return {"mean": float(np.mean(v)), "n_instances": 1, "n_seeds": len(v), "per_instance_mean": {
            k: float(np.mean(x)) for k, x in per_inst.items()}, "better": None}
    iv = instance_level_intervals(per_inst, reps=REPS)
    sign = sign_by_both_intervals(iv["ci95_low"], iv["ci95_high"], iv["t95_low"], iv["t95_high"])
    return {"mean": iv["mean"], "ci95_low": iv["ci95_low"], "ci95_high": iv["ci95_high"],
            "t_ci95_over_instances": [iv["t95_low"], iv["t95_high"]], "n_instances": len(per_inst),
            "n_seeds": max(len(v) for v in per_inst.values()),
            "per_instance_mean": {k: float(np.mean(v)) for k, v in per_inst.items()},
            "better": sign == -1, "worse": sign == 1}


def _median_with_interval(per_instance: dict[str, list[float]], seed: int = 0) -> tuple[float, float, float]:
    """The median over every (instance, seed) value, with a 95% percentile interval from resampling
    the instances (each keeps its seeds): the pairs of one instance are not independent."""
    names = sorted(per_instance)
    pooled = [x for n in names for x in per_instance[n]]
    rng = np.random.default_rng(seed)
    meds = []
    for _ in range(REPS):
        pick = rng.integers(len(names), size=len(names))
        meds.append(float(np.median([x for i in pick for x in per_instance[names[i]]])))
    return float(np.median(pooled)), float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def scale_points(runs: list[dict]) -> list[tuple[str, float, float]]:
    """(instance, start lr scale, final lr scale) of controlled episodes: the lr relative to the
    recipe's own at the start and after the last decision."""
    out = []
    for r in runs:
        start = (r.get("start_scales") or [None])[0]
        if start is not None:
            final = r["scales"][-1][0] if r.get("scales") else start
            out.append((r["instance"], float(start), float(final)))
    return out


def rescue_summary(runs: dict[str, list[dict]], extrapolation: Iterable[str] = ()) -> dict:
    """What the module docstring says, per method and per instance; the recipe comparison apart
    for the extrapolation instances."""
    extrapolation = set(extrapolation)
    base = _by_pair(runs["held_start"])
    out: dict = {"gap_definition": "test loss / the base recipe's own test loss on the same instance and seed - 1",
                 "gap_goal": GAP_GOAL, "methods": {}}
    for m in RESCUE:
        if m not in runs:
            continue
        per_inst: dict[str, list[float]] = {}
        steps: list[int] = []
        for r in runs[m]:
            ref = base[(r["instance"], r["seed"])]["test_loss"]
            per_inst.setdefault(r["instance"], []).append(r["test_loss"] / ref - 1.0)
            steps.append(len(r["schedule"]) + (r.get("range_test") or {}).get("steps", 0))
        med, lo, hi = _median_with_interval(per_inst)
        out["methods"][m] = {"median_gap": med, "median_gap_ci95": [lo, hi],
                             "per_instance_mean_gap": {k: float(np.mean(v)) for k, v in per_inst.items()},
                             "mean_compute_steps": float(np.mean(steps)), "n_runs": len(runs[m])}
    pol = out["methods"].get("policy_guess")
    out["goal_met"] = bool(pol and pol["median_gap"] <= GAP_GOAL)
    out["policy_guess_minus"] = {b: paired_intervals(runs, "policy_guess", b) for b in ("held_guess", "range_test")
                                 if b in runs}
    insts = {r["instance"] for r in runs["policy"]}
    out["policy_minus_base_recipe"] = {
        "in_range": paired_intervals(runs, "policy", "held_start", insts - extrapolation),
        "extrapolation": paired_intervals(runs, "policy", "held_start", insts & extrapolation),
        "extrapolation_instances": sorted(insts & extrapolation)}
    own = scale_points(runs["policy"])  # from the recipe's own lr: how far, and how differently, it corrects
    if own:
        final = np.array([p[2] for p in own])
        per_inst: dict[str, list[float]] = {}
        for name, _, f in own:
            per_inst.setdefault(name, []).append(f)
        means = np.array([np.mean(v) for v in per_inst.values()])
        out["correction_from_recipe"] = {
            "median_final_lr_scale": float(np.median(final)),
            "final_lr_scale_iqr": [float(x) for x in np.percentile(final, [25, 75])],
            "per_instance_mean_range": [float(means.min()), float(means.max())],
            "definition": "the policy's lr over the recipe's own after its last decision, in its runs from the "
                          "recipe's start (1 = the recipe); the range is over instances' means"}
    pts = scale_points(runs.get("policy_guess", []))
    if len(pts) >= 2:
        start, final = np.log2([p[1] for p in pts]), np.log2([p[2] for p in pts])
        out["steering_from_guesses"] = {
            "scale_contraction": float(final.std() / start.std()) if start.std() > 0 else None,
            "median_abs_final_log2_scale": float(np.median(np.abs(final))),
            "median_abs_start_log2_scale": float(np.median(np.abs(start))),
            "definition": "std(log2 final lr scale) / std(log2 start scale) over policy_guess episodes; the "
                          "scale is the lr over the recipe's own (1 = the recipe)"}
    return out


def _interval_text(d: Optional[dict]) -> str:
    if not d:
        return "n/a"
    if "ci95_low" not in d:
        return f"{d['mean']:+.4f} (1 instance: no interval)"
    t = d["t_ci95_over_instances"]
    verdict = "better" if d["better"] else "worse" if d.get("worse") else "not clearly different"
    return (f"{d['mean']:+.4f} [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] (t over instances "
            f"[{t[0]:+.4f}, {t[1]:+.4f}]; {d['n_instances']} x {d['n_seeds']}): {verdict}")


def rescue_markdown(summary: dict) -> str:
    pm = summary["policy_minus_base_recipe"]
    lines = ["", "## Against the recipe it corrects, and from a user's wrong start", "",
             "Policy − base recipe (both from the recipe's own lr; test loss, negative = policy better; "
             "two-level bootstrap and t over instance means, 'better' needs both below 0):", "",
             f"- in the training range: {_interval_text(pm['in_range'])}",
             f"- extrapolation instances ({', '.join(pm['extrapolation_instances']) or 'none'}): "
             f"{_interval_text(pm['extrapolation'])}", "",
             f"From a user's guess (the recipe's lr x 0.01..100): gap = {summary['gap_definition']}; "
             f"goal: the policy's median gap <= {summary['gap_goal']:.0%} "
             f"({'met' if summary['goal_met'] else 'not met'}).", "",
             "| method | median gap (95% interval, instances resampled) | mean steps | runs |", "|---|---|---|---|"]
    for m, d in summary["methods"].items():
        lo, hi = d["median_gap_ci95"]
        lines.append(f"| {m} | {d['median_gap']:+.2%} [{lo:+.2%}, {hi:+.2%}] | {d['mean_compute_steps']:.0f} | "
                     f"{d['n_runs']} |")
    for b, d in summary["policy_guess_minus"].items():
        lines.append(f"\npolicy_guess − {b}: {_interval_text(d)}")
    cr = summary.get("correction_from_recipe")
    if cr:
        lines += ["", f"From the recipe's own start the policy ends at a median {cr['median_final_lr_scale']:.2f}x the "
                      f"recipe's lr (IQR {cr['final_lr_scale_iqr'][0]:.2f}-{cr['final_lr_scale_iqr'][1]:.2f}; instances' "
                      f"means {cr['per_instance_mean_range'][0]:.2f}-{cr['per_instance_mean_range'][1]:.2f})."]
    st = summary.get("steering_from_guesses")
    if st and st["scale_contraction"] is not None:
        lines += ["", f"Steering from the guesses: the final lr scale spreads {st['scale_contraction']:.2f}x as "
                      f"widely as the start's (median |log2 scale| {st['median_abs_start_log2_scale']:.2f} at the "
                      f"start, {st['median_abs_final_log2_scale']:.2f} at the end; 0 = the recipe's lr). "
                      "Plot: rescue_scales.png."]
    names = sorted(next(iter(summary["methods"].values()))["per_instance_mean_gap"]) if summary["methods"] else []
    if names:
        lines += ["", "| instance | " + " | ".join(f"{m} gap" for m in summary["methods"]) + " |",
                  "|---|" + "---|" * len(summary["methods"])]
        for n in names:
            cells = [f"{d['per_instance_mean_gap'][n]:+.2%}" for d in summary["methods"].values()]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
