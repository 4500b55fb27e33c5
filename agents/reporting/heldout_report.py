"""The held-out table: the policy against the default recipe and against no control (its drawn
start held), per instance and paired on instance and seed; written as heldout.json / heldout.md
with one trajectory plot per instance, and logged to MLflow."""
from __future__ import annotations

import math
from pathlib import Path

from agents.reporting.plots import trajectories
from agents.reporting.statistics import mean_ci95
from trainers.atomic_files import write_json_atomic, write_text_atomic
from trainers.provenance import utc_now

METHODS = ("policy", "default_recipe", "initial_constant")  # what agents.evaluation.heldout runs
# (baseline, key in the summary) for the paired differences reported against the policy
PAIRED = (("default_recipe", "policy_minus_recipe"), ("initial_constant", "policy_minus_initial_constant"))


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
        pairs = {(r["instance"], r["seed"]): r["test_loss"] for r in runs[baseline]}
        diffs = [p["test_loss"] - pairs[(p["instance"], p["seed"])] for p in runs["policy"]]
        d_mean, d_ci = mean_ci95(diffs)
        out[key] = {"test_loss_diff_mean": d_mean, "test_loss_diff_ci95": d_ci, "n_pairs": len(diffs),
                    "policy_better": bool(d_mean + d_ci < 0) if math.isfinite(d_ci) else None}
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


def write_heldout_report(folder: Path, runs: dict[str, list[dict]], command: str, log_to_mlflow: bool = True) -> dict:
    summary = summarise_heldout(runs)
    summary["command"] = command
    summary["measured_at"] = utc_now()
    write_json_atomic(folder / "heldout.json", {"summary": summary, "runs": runs})
    write_text_atomic(folder / "heldout.md", heldout_markdown(summary, f"Held-out evaluation of {folder.name}", command))
    plots = []
    labels = {"policy": "policy", "default_recipe": "default recipe", "initial_constant": "no control (initial held)"}
    for inst in sorted({r["instance"] for r in runs["policy"]}):
        seed = next(r["seed"] for r in runs["policy"] if r["instance"] == inst)  # the first seed of each instance
        picked = {labels[m]: next(r for r in runs[m] if r["instance"] == inst and r["seed"] == seed) for m in METHODS}
        plots.append(trajectories(picked, folder / f"trajectory_{inst}.png", f"{inst} (seed {seed})"))
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
