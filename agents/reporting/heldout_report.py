"""The held-out table: the policy against the default recipe and against no control (its drawn
start held: held_start), per instance and paired on instance and seed; written as heldout.json / heldout.md
with one trajectory plot per instance, and logged to MLflow."""
from __future__ import annotations

import math
from pathlib import Path

from agents.reporting.plots import final_vs_start_lr, trajectories
from agents.reporting.statistics import (HIERARCHICAL_METHOD, instance_level_intervals, mean_ci95,
                                         sign_by_both_intervals)
from trainers.atomic_files import write_json_atomic, write_text_atomic
from trainers.provenance import utc_now

METHODS = ("policy", "default_recipe", "held_start")  # what the held-out evaluation runs (agents.methods.HELDOUT)
# (baseline, key in the summary) for the paired differences reported against the policy
PAIRED = (("default_recipe", "policy_minus_recipe"), ("held_start", "policy_minus_held_start"))


BOOTSTRAP_REPS = 10000


def lr_points(runs: dict[str, list[dict]]) -> list[tuple[str, float, float]]:
    """(instance, starting lr, policy's final lr) per held-out episode. The start is the drawn one,
    set before the policy's first action: as the episode logged it, or else as the no-control run
    of the same instance and seed holds it (the policy's first step already has its first action
    applied, so an episode with neither is left out)."""
    held = {(r["instance"], r["seed"]): r["schedule"][0]["lr"] for r in runs.get("held_start", []) if r["schedule"]}
    points = []
    for r in runs.get("policy", []):
        start = (r.get("initial_hparams") or {}).get("lr", held.get((r["instance"], r["seed"])))
        if start is not None and r["schedule"]:
            points.append((r["instance"], float(start), r["schedule"][-1]["lr"]))
    return points


def steering(runs: dict[str, list[dict]]) -> dict:
    """How the policy moves the learning rate: lr_contraction = std(log final lr) / std(log
    starting lr) over held-out episodes (1: holds its start; 0: ends every run at one lr); and,
    among the lowest and highest thirds of starts, how often it raised or lowered them. A residual
    controller's lr follows its recipe's warmup and decay, so its start and end are read as scales
    on the recipe, over its episodes from a user's guess (the others all start at scale 1)."""
    import numpy as np

    from agents.reporting.rescue_report import scale_points

    pts = scale_points(runs["policy_guess"]) if "policy_guess" in runs else lr_points(runs)
    if len(pts) < 2:
        return {"lr_contraction": None, "n_episodes": len(pts)}
    start = np.log([p[1] for p in pts])
    final = np.log([p[2] for p in pts])
    order = np.argsort(start)
    third = max(1, len(pts) // 3)
    low, high = order[:third], order[-third:]
    return {"lr_contraction": float(final.std() / start.std()) if start.std() > 0 else None,
            "n_episodes": len(pts),
            "lowest_third_starts_raised": float(np.mean(final[low] > start[low])),
            "highest_third_starts_lowered": float(np.mean(final[high] < start[high])),
            "median_abs_log2_change": float(np.median(np.abs(final - start)) / np.log(2)),
            "definition": ("std(log final lr scale) / std(log starting lr scale) over the policy's held-out episodes "
                           "from a user's guess (scale: lr over the recipe's own)" if "policy_guess" in runs else
                           "std(log final lr) / std(log starting lr) over held-out policy episodes")}


def paired_differences(runs: dict[str, list[dict]], baseline: str) -> dict[str, list[float]]:
    """instance -> policy − baseline test losses, paired on (instance, seed), in the policy's order."""
    pairs = {(r["instance"], r["seed"]): r["test_loss"] for r in runs[baseline]}
    per_inst: dict[str, list[float]] = {}
    for p in runs["policy"]:
        per_inst.setdefault(p["instance"], []).append(p["test_loss"] - pairs[(p["instance"], p["seed"])])
    return per_inst


def paired_instance_level(runs: dict[str, list[dict]]) -> dict:
    """policy − baseline test loss, paired on (instance, seed), aggregated at the instance level."""
    out = {}
    for baseline, _ in PAIRED:
        if not runs.get("policy") or not runs.get(baseline):
            continue
        per_inst = paired_differences(runs, baseline)
        iv = instance_level_intervals(per_inst, reps=BOOTSTRAP_REPS)
        finite = math.isfinite(iv["ci95_high"]) and math.isfinite(iv["t95_high"])
        out[baseline] = {"mean": iv["mean"], "ci95_low": iv["ci95_low"], "ci95_high": iv["ci95_high"],
                         "n_instances": len(per_inst), "n_seeds": max(len(v) for v in per_inst.values()),
                         "per_instance_mean": {i: sum(v) / len(v) for i, v in per_inst.items()},
                         # a percentile bootstrap over few instances runs narrow: a t interval over
                         # the instance means stands beside it, and "better" needs both
                         "t_ci95_over_instances": [iv["t95_low"], iv["t95_high"]],
                         "policy_better": sign_by_both_intervals(iv["ci95_low"], iv["ci95_high"], iv["t95_low"],
                                                                iv["t95_high"]) == -1 if finite else None,
                         "method": HIERARCHICAL_METHOD.format(reps=BOOTSTRAP_REPS) +
                         "; t_ci95_over_instances: Student t over the instance means (n_instances - 1 dof)"}
    return out


def summarise_heldout(runs: dict[str, list[dict]]) -> dict:
    """runs: method -> episode logs. Per method: mean test loss with its 95% interval, per instance."""
    out: dict = {}
    for method, logs in runs.items():
        losses = [r["test_loss"] for r in logs]
        mean, ci = mean_ci95(losses)
        per_inst: dict[str, dict] = {}
        for r in logs:
            d = per_inst.setdefault(r["instance"], {"test_loss": [], "test_metric": [], "seeds": []})
            d["test_loss"].append(r["test_loss"])
            d["seeds"].append(r["seed"])
            if r.get("test_metric") is not None:
                d["test_metric"].append(r["test_metric"])
        for d in per_inst.values():
            d["test_loss_mean"], d["test_loss_ci95"] = mean_ci95(d["test_loss"])
            if d["test_metric"]:
                d["test_metric_mean"] = sum(d["test_metric"]) / len(d["test_metric"])
        out[method] = {"test_loss_mean": mean, "test_loss_ci95": ci, "n_runs": len(logs),
                       "n_diverged": sum(bool(r["diverged"]) for r in logs), "per_instance": per_inst}
    for baseline, key in PAIRED:
        if "policy" not in runs or baseline not in runs:
            continue
        diffs = [d for v in paired_differences(runs, baseline).values() for d in v]
        d_mean, d_ci = mean_ci95(diffs)
        out[key] = {"test_loss_diff_mean": d_mean, "test_loss_diff_ci95": d_ci, "n_pairs": len(diffs),
                    "policy_better": bool(d_mean + d_ci < 0) if math.isfinite(d_ci) else None,
                    "method": "mean over (instance, seed) pairs, Student t interval treating pairs as independent "
                              "(optimistic: see 'paired' for the instance-level interval)"}
    out["paired"] = paired_instance_level(runs)
    out["steering"] = steering(runs)
    out["lr_contraction"] = out["steering"]["lr_contraction"]
    return out


def heldout_markdown(summary: dict, title: str, command: str) -> str:
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             "| method | test loss (mean ± 95% CI) | runs | diverged |", "|---|---|---|---|"]
    for m in METHODS:
        if m in summary:
            s = summary[m]
            lines.append(f"| {m} | {s['test_loss_mean']:.4f} ± {s['test_loss_ci95']:.4f} | {s['n_runs']} | {s['n_diverged']} |")
    for baseline, key in PAIRED:
        if key in summary:
            d = summary[key]
            lines += ["", f"Paired difference policy − {baseline} (same instance and seed): "
                          f"{d['test_loss_diff_mean']:+.4f} ± {d['test_loss_diff_ci95']:.4f} over {d['n_pairs']} pairs "
                          f"(negative = policy better)."]
    if summary.get("paired"):
        lines += ["", "Instance level (the headline): policy − baseline test loss, "
                      "mean over instances with a two-level bootstrap 95% interval (instances, then seeds), and a t interval over the instance means; 'policy better' needs both below 0:", "",
                  "| baseline | mean | 95% interval | instances x seeds | policy better |", "|---|---|---|---|---|"]
        for baseline, d in summary["paired"].items():
            t_lo, t_hi = d["t_ci95_over_instances"]
            better = {True: "yes", False: "no", None: "n/a"}[d["policy_better"]]
            lines.append(f"| {baseline} | {d['mean']:+.4f} | [{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}] "
                         f"(t over instances: [{t_lo:+.4f}, {t_hi:+.4f}]) | {d['n_instances']} x {d['n_seeds']} | "
                         f"{better} |")
    st = summary.get("steering") or {}
    if st.get("lr_contraction") is not None:
        lines += ["", f"Steering: lr_contraction = {st['lr_contraction']:.3f} (std of log final lr / std of log "
                      f"starting lr over {st['n_episodes']} episodes; 1 = holds its start); of the lowest third of "
                      f"starts {st['lowest_third_starts_raised']:.0%} were raised, of the highest third "
                      f"{st['highest_third_starts_lowered']:.0%} were lowered; median |change| "
                      f"{st['median_abs_log2_change']:.2f} doublings. Plot: "
                      f"{'rescue_scales.png' if 'rescue' in summary else 'lr_final_vs_start.png'}."]
    if "rescue" in summary:
        lines += ["", "A residual controller: held_start is its base recipe run from the recipe's own lr, never "
                      "corrected; the steering is read from its runs that start at a user's guess."]
    lines += ["", "| instance | " + " | ".join(f"{m} test loss" for m in METHODS if m in summary) + " |",
              "|---|" + "---|" * sum(m in summary for m in METHODS)]
    insts = summary[METHODS[0]]["per_instance"].keys()
    for inst in insts:
        cells = []
        for m in METHODS:
            if m in summary:
                d = summary[m]["per_instance"][inst]
                metric = f" (exact match {d['test_metric_mean']:.2f})" if "test_metric_mean" in d else ""
                cells.append(f"{d['test_loss_mean']:.4f}{metric}")
        lines.append(f"| {inst} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_heldout_report(folder: Path, runs: dict[str, list[dict]], command: str, log_to_mlflow: bool = True,
                         extra: dict | None = None, extrapolation: frozenset[str] = frozenset()) -> dict:
    """``extrapolation``: held-out instances outside the training range, reported apart where a
    residual controller's rescue table is written (agents/reporting/rescue_report.py)."""
    from agents.reporting.rescue_report import rescue_markdown, rescue_summary, scale_points
    from trainers.provenance import machine_info

    summary = summarise_heldout(runs)
    summary["command"] = command
    summary["measured_at"] = utc_now()
    summary["machine"] = machine_info()
    summary.update(extra or {})
    plots = []
    if "policy_guess" in runs:  # a residual controller: against its recipe, and its rescue of wrong starts
        summary["rescue"] = rescue_summary(runs, extrapolation)
    text = heldout_markdown(summary, f"Held-out evaluation of {folder.name}", command)
    if "rescue" in summary:
        text += rescue_markdown(summary["rescue"])
        plots.append(final_vs_start_lr(scale_points(runs["policy_guess"]), folder / "rescue_scales.png",
                                       f"{folder.name}: from a user's guess, the lr scale it ends at",
                                       ("start lr / the recipe's (a user's guess)", "final lr / the recipe's (policy)"),
                                       target=1.0))
    write_json_atomic(folder / "heldout.json", {"summary": summary, "runs": runs})
    write_text_atomic(folder / "heldout.md", text)
    labels = {"policy": "policy", "default_recipe": "default recipe", "held_start": "held start (no control)",
              "policy_guess": "policy from a user's guess", "held_guess": "the guess, no control",
              "range_test": "range test, then the recipe"}
    if "policy_guess" in runs:
        labels["held_start"] = "base recipe (no control)"
    for inst in sorted({r["instance"] for r in runs["policy"]}):
        seed = next(r["seed"] for r in runs["policy"] if r["instance"] == inst)  # the first seed of each instance
        picked = {labels[m]: next(r for r in runs[m] if r["instance"] == inst and r["seed"] == seed)
                  for m in runs if m in labels}
        plots.append(trajectories(picked, folder / f"trajectory_{inst}.png", f"{inst} (seed {seed})"))
    if runs.get("policy") and runs.get("held_start") and "policy_guess" not in runs:
        plots.append(final_vs_start_lr(lr_points(runs), folder / "lr_final_vs_start.png",
                                       f"{folder.name}: final vs starting lr on held-out instances"))
    if log_to_mlflow:
        import mlflow

        from agents.reporting.mlflow_tracking import log_episode

        for method, logs in runs.items():
            for r in logs:
                log_episode(r, f"heldout/{method}/{r['instance']}/seed{r['seed']}", {"method": method, "phase": "heldout"})
        for m in METHODS:
            mlflow.log_metric(f"heldout_{m}_test_loss_mean", summary[m]["test_loss_mean"])
        mlflow.log_artifact(str(folder / "heldout.md"))
        mlflow.log_artifact(str(folder / "heldout.json"))
        for p in plots:
            mlflow.log_artifact(str(p), artifact_path="plots")
    return summary


HEADLINE_AGENT = "results/agents/ppo-smollm2_cpu"  # the README's headline controller


def verdict_lines(folder: Path, summary: dict, headline: Path | None = None) -> list[str]:
    """What a newcomer should read last: does this controller steer on its held-out instances
    (lr_contraction < 1), how it fares against the default recipe, and which plot to open. A run
    that does not steer says plainly that it is a plumbing run and points to the headline one."""
    import json

    c = summary.get("lr_contraction")
    paired = (summary.get("paired") or {}).get("default_recipe") or {}
    vs = ""
    if "mean" in paired:
        t = paired.get("t_ci95_over_instances")
        t_text = f", t over instance means [{t[0]:+.4f}, {t[1]:+.4f}]" if t else ""
        bounds = (paired["ci95_low"], paired["ci95_high"], *(t or (paired["ci95_low"], paired["ci95_high"])))
        clear = ("better" if paired.get("policy_better") else "worse by every interval"
                 if sign_by_both_intervals(*bounds) == 1 else "not clearly better (both intervals must lie below 0)")
        vs = (f"; policy - default recipe = {paired['mean']:+.4f} test loss per instance (95% two-level bootstrap "
              f"[{paired['ci95_low']:+.4f}, {paired['ci95_high']:+.4f}]{t_text}; {paired['n_instances']} instances "
              f"x {paired['n_seeds']} seeds): the policy is {clear}")
    if c is not None and c < 1:
        lines = [f"the controller steers: on held-out instances its final lr spreads {c:.2f}x as widely as its "
                 f"starting lr (lr_contraction {c:.3f} < 1){vs}"]
    else:
        shown = "undefined" if c is None else f"{c:.3f} >= 1"
        lines = [f"this is a plumbing run: its controller does not steer on held-out instances "
                 f"(lr_contraction {shown}){vs}"]
        head = headline or Path(__file__).resolve().parents[2] / HEADLINE_AGENT
        meta = head / "agent.json"
        if meta.is_file():
            cmd = json.loads(meta.read_text()).get("command", "")
            lines.append(f"the headline controller is {HEADLINE_AGENT} (README); it was made by: {cmd}")
    if (folder / "lr_final_vs_start.png").is_file():
        lines.append(f"open the plot: {folder / 'lr_final_vs_start.png'} (final lr against starting lr, per episode)")
    return lines
