"""Held-out evaluation: the learned policy against the default recipe, test split reported.

    python -m agents.evaluate --agent results/agents/<name> [--seeds 3]

Every held-out instance x seed runs three times on the same seeds (same batches and dropout):
with the policy (deterministic actions); with the default static recipe; and with no control
(``initial_constant``: the policy's own starting hyperparameters, drawn from the instance's
range, held fixed). The last separates what the policy's steering buys from what its starting
point gives. Validation drives nothing here; the test split of each run is what is reported.
Writes heldout.json / heldout.md (and a trajectory plot per instance) into the agent folder, and
logs them to MLflow.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from agents.agent_folder import Controller
from agents.plots import trajectories
from agents.rollout import run_constant, run_controller, run_recipe
from agents.stats import mean_ci95
from envs.finetune_env import FineTuneEnv
from trainers.config import InstanceSetConfig

METHODS = ("policy", "default_recipe", "initial_constant")
# (baseline, key in the summary) for the paired differences reported against the policy
PAIRED = (("default_recipe", "policy_minus_recipe"), ("initial_constant", "policy_minus_initial_constant"))


def summarise(runs: dict[str, list[dict]]) -> dict:
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


def markdown(summary: dict, title: str, command: str) -> str:
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


def evaluate_heldout(controller: Controller, seeds: list[int], env: Optional[FineTuneEnv] = None,
                     cfg: Optional[InstanceSetConfig] = None, show_progress: bool = True) -> dict[str, list[dict]]:
    """Run policy and recipe on every held-out instance x seed; returns method -> episode logs."""
    cfg = cfg or controller.env_config
    env = env or FineTuneEnv(cfg, split="heldout", evaluate_test=True)
    env.evaluate_test = True
    controller.check_compatible(env.actions)
    jobs = [(inst.name, s) for inst in cfg.heldout for s in seeds]
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for name, seed in tqdm(jobs, desc="held-out evaluation", unit="instance x seed", disable=not show_progress):
        runs["policy"].append(run_controller(env, controller, name, seed))
        runs["default_recipe"].append(run_recipe(env, cfg.default_recipe, name, seed))
        runs["initial_constant"].append(run_constant(env, name, seed))
    return runs


def write_report(folder: Path, runs: dict[str, list[dict]], command: str, log_to_mlflow: bool = True) -> dict:
    summary = summarise(runs)
    summary["command"] = command
    summary["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (folder / "heldout.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
    (folder / "heldout.md").write_text(markdown(summary, f"Held-out evaluation of {folder.name}", command))
    plots = []
    labels = {"policy": "policy", "default_recipe": "default recipe", "initial_constant": "no control (initial held)"}
    for inst in sorted({r["instance"] for r in runs["policy"]}):
        seed = next(r["seed"] for r in runs["policy"] if r["instance"] == inst)  # the first seed of each instance
        picked = {labels[m]: next(r for r in runs[m] if r["instance"] == inst and r["seed"] == seed) for m in METHODS}
        plots.append(trajectories(picked, folder / f"trajectory_{inst}.png", f"{inst} (seed {seed})"))
    if log_to_mlflow:
        import mlflow

        from agents.tracking import log_episode

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


def main(argv: Optional[list[str]] = None) -> None:
    import sys

    from agents import tracking

    p = argparse.ArgumentParser(prog="python -m agents.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", required=True, help="agent folder (results/agents/<name>)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per held-out instance (default: 3)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under results/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = p.parse_args(argv)
    controller = Controller(args.agent)
    command = "python -m agents.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    runs = evaluate_heldout(controller, list(range(args.seeds)))
    folder = Path(args.agent)
    if args.no_mlflow:
        summary = write_report(folder, runs, command, log_to_mlflow=False)
    else:
        import mlflow

        tracking.setup(args.tracking_uri, "heldout-evaluation")
        with mlflow.start_run(run_name=f"evaluate/{folder.name}"):
            summary = write_report(folder, runs, command)
    print(markdown(summary, f"Held-out evaluation of {folder.name}", command))
    print(f"written: {folder / 'heldout.json'}, {folder / 'heldout.md'}")


if __name__ == "__main__":
    main()
