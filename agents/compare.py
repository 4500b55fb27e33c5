"""The learned controller against searches and fixed recipes, at matched compute.

    python -m agents.compare --agent results/agents/ppo-tiny-seed0 [--budgets 1 4 8 16] [--seeds 3]

For every held-out instance and seed, every method runs; compute is counted in training steps
actually run (pruned trials included). Searches select by validation loss; what is reported is
the test loss of the selected run. Methods:
  policy           the learned controller: one run
  default_recipe   the configs/ recipe: one run
  hand_schedule    warmup then cosine at the recipe's lr: one run
  random_search    random recipes from the Optuna space, best of the first B
  optuna_tpe       TPE + median pruning, best of the first B finished trials
  pbt              Ray Tune Population Based Training, population P (costs P runs)
Outputs in results/compare/<name>/: summary.md/csv/json and PNG plots; one MLflow run with
nested runs per method.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import optuna
from tqdm.auto import tqdm

from agents.agent_folder import Controller
from agents.optuna_baseline import best_trial, compute_steps, run_study
from agents.rollout import run_controller, run_recipe
from agents.stats import mean_ci95
from envs.finetune_env import FineTuneEnv
from trainers.config import REPO_ROOT, RecipeConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def search_at_budgets(study: optuna.Study, budgets: list[int]) -> dict[int, dict]:
    """For each budget B: the best-by-validation of the first B finished trials, and its cost."""
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    out = {}
    for b in budgets:
        best = best_trial(study, b)
        out[b] = {"compute_steps": sum(int(t.user_attrs.get("compute_steps", 0)) for t in finished[:b]),
                  "test_loss": best.user_attrs["test_loss"] if best else float("nan"),
                  "val_loss": best.value if best else float("nan"),
                  "params": best.params if best else None,
                  "eval_curve": best.user_attrs.get("eval_curve") if best else None,
                  "schedule_lr": best.user_attrs.get("schedule_lr") if best else None}
    return out


def compare_one(env: FineTuneEnv, controller: Controller, instance: str, seed: int, budgets: list[int],
                storage_dir: Path, pbt_populations: tuple[int, ...] = ()) -> dict:
    """All methods on one instance and seed. Returns method -> budget -> record."""
    cfg = env.cfg
    steps = cfg.steps_for(cfg.instance(instance))
    res: dict[str, dict] = {}
    log = run_controller(env, controller, instance, seed)
    res["policy"] = {1: {"compute_steps": len(log["schedule"]), "test_loss": log["test_loss"], "log": log}}
    log = run_recipe(env, cfg.default_recipe, instance, seed)
    res["default_recipe"] = {1: {"compute_steps": steps, "test_loss": log["test_loss"], "log": log}}
    hand = RecipeConfig(lr=cfg.default_recipe.lr, weight_decay=cfg.default_recipe.weight_decay,
                        grad_clip=cfg.default_recipe.grad_clip, warmup_fraction=0.1, decay="cosine")
    log = run_recipe(env, hand, instance, seed)
    res["hand_schedule"] = {1: {"compute_steps": steps, "test_loss": log["test_loss"], "log": log}}
    n = max(budgets)
    for method, pruner, sampler in (("random_search", "none", optuna.samplers.RandomSampler(seed=seed)),
                                    ("optuna_tpe", "median", None)):
        name = f"{instance}-seed{seed}-{method}"
        storage = f"sqlite:///{storage_dir / (name + '.db')}"
        if sampler is not None:  # random search = Optuna's RandomSampler, same objective, no pruning
            study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, sampler=sampler,
                                        pruner=optuna.pruners.NopPruner())
            from agents.optuna_baseline import run_trial

            left = n - len([t for t in study.trials if t.state.is_finished()])
            if left > 0:
                study.optimize(lambda t: run_trial(t, env, instance, seed), n_trials=left)
        else:
            study = run_study(env, instance, seed, n, storage, name, pruner=pruner, sampler_seed=seed,
                              show_progress=False)
        res[method] = search_at_budgets(study, budgets)
    if pbt_populations:  # Ray Tune trials in their own processes; the in-process env is not used
        from agents.pbt_baseline import run_pbt

        res["pbt"] = {p: run_pbt(cfg, instance, seed, p, storage_dir / "pbt") for p in pbt_populations}
    return res


def save_results(path: Path, key: dict, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "results": results}, default=str))
    tmp.replace(path)  # atomic: a crash never leaves half a file that a resume would trust


def load_saved_results(path: Path, key: dict) -> Optional[dict]:
    """A finished instance x seed from an earlier, interrupted run of the same comparison, if any."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("key") != key:  # another agent or other budgets: recompute
        return None
    return {m: {int(b): rec for b, rec in by_b.items()} for m, by_b in saved["results"].items()}


def summarise(per_run: list[dict], budgets: list[int]) -> dict:
    """Per method and budget: mean test loss with a 95% interval over instance x seed runs, and the
    smallest Optuna budget that matches the policy's single run (computed, never assumed)."""
    methods: dict[str, dict] = {}
    for m, by_budget in per_run[0]["results"].items():
        for b in sorted(by_budget):
            rows = [r["results"][m][b] for r in per_run]
            losses = [x["test_loss"] for x in rows]
            mean, ci = mean_ci95(losses)
            per_inst: dict[str, list[float]] = {}
            for r, x in zip(per_run, rows):
                per_inst.setdefault(r["instance"], []).append(x["test_loss"])
            # same instance and seed on both sides: the instances' spread cancels out
            diffs = [r["results"]["policy"][1]["test_loss"] - x["test_loss"] for r, x in zip(per_run, rows)]
            d_mean, d_ci = mean_ci95(diffs)
            methods.setdefault(m, {})[str(b)] = {
                "compute_steps": sum(x["compute_steps"] for x in rows) / len(rows),
                "test_loss_mean": mean, "test_loss_ci95": ci, "n_runs": len(rows),
                "policy_minus_this_mean": d_mean, "policy_minus_this_ci95": d_ci,
                "per_instance": {k: sum(v) / len(v) for k, v in per_inst.items()},
            }
    policy_mean = methods["policy"]["1"]["test_loss_mean"]
    match = None
    for b in sorted(budgets):
        if methods["optuna_tpe"][str(b)]["test_loss_mean"] <= policy_mean:
            match = b
            break
    runs = [{"instance": r["instance"], "seed": r["seed"], "method": m, "budget": b,
             "compute_steps": x["compute_steps"], "test_loss": x["test_loss"]}
            for r in per_run for m, by_budget in r["results"].items() for b, x in sorted(by_budget.items())]
    return {"methods": methods, "optuna_budget_to_match_policy": match, "runs": runs}


def _save_compute_plot(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    """The shared frame of the plots against compute: log steps on x, a legend."""
    from agents.plots import save_figure

    ax.set_xscale("log")
    ax.set_xlabel("training steps spent per instance (log)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_outputs(out: Path, summary: dict, per_run: list[dict], command: str, budgets: list[int]) -> list[Path]:
    from agents.plots import save_figure, trajectories

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "budget_runs", "compute_steps", "test_loss_mean", "test_loss_ci95", "n_runs"])
        for m, by_b in summary["methods"].items():
            for b, s in by_b.items():
                w.writerow([m, b, f"{s['compute_steps']:.0f}", f"{s['test_loss_mean']:.5f}", f"{s['test_loss_ci95']:.5f}", s["n_runs"]])
    lines = [f"# Comparison at matched compute", "", f"Command: `{command}`", "",
             "| method | budget (runs) | training steps | test loss (mean ± 95% CI) | policy − this, paired (mean ± 95% CI) | runs |",
             "|---|---|---|---|---|---|"]
    for m, by_b in summary["methods"].items():
        for b, s in by_b.items():
            paired = "" if m == "policy" else f"{s['policy_minus_this_mean']:+.4f} ± {s['policy_minus_this_ci95']:.4f}"
            lines.append(f"| {m} | {b} | {s['compute_steps']:.0f} | {s['test_loss_mean']:.4f} ± {s['test_loss_ci95']:.4f} "
                         f"| {paired} | {s['n_runs']} |")
    lines += ["", f"optuna_budget_to_match_policy: {summary['optuna_budget_to_match_policy']} "
                  "(smallest Optuna budget whose mean test loss is at least as good as the policy's single run; "
                  "null = none of the budgets tried)",
              "", "The paired column is the policy's test loss minus this method's on the same instance and seed: "
                  "negative means the policy's single run was better."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")

    import matplotlib.pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for m, by_b in summary["methods"].items():
        xs = [s["compute_steps"] for s in by_b.values()]
        ys = [s["test_loss_mean"] for s in by_b.values()]
        es = [0 if math.isnan(s["test_loss_ci95"]) else s["test_loss_ci95"] for s in by_b.values()]
        ax.errorbar(xs, ys, yerr=es, marker="o" if len(xs) > 1 else "*", ms=6 if len(xs) > 1 else 12, capsize=3, label=m)
    plots.append(_save_compute_plot(fig, ax, "test loss of the selected run",
                                    "test loss against compute (held-out instances)", out / "loss_vs_compute.png"))

    # The instances' spread swamps the plot above; paired on instance and seed, it cancels out.
    fig, ax = plt.subplots(figsize=(6.4, 4))
    policy_steps = summary["methods"]["policy"]["1"]["compute_steps"]
    ax.axhline(0.0, color="C0", lw=1)
    ax.plot([policy_steps], [0.0], "*", ms=14, color="C0", label="policy (one run)")
    for j, (m, by_b) in enumerate(summary["methods"].items()):
        if m == "policy":
            continue
        xs = [s["compute_steps"] for s in by_b.values()]
        ys = [-s["policy_minus_this_mean"] for s in by_b.values()]
        es = [0 if math.isnan(s["policy_minus_this_ci95"]) else s["policy_minus_this_ci95"] for s in by_b.values()]
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=5, capsize=3, color=f"C{j}", label=m)
    plots.append(_save_compute_plot(fig, ax, "test loss minus the policy's (paired)",
                                    "above 0: the policy's single run was better (95% CI)", out / "paired_vs_compute.png"))

    insts = sorted({r["instance"] for r in per_run})
    bmax = str(max(budgets))
    shown = [("policy", "1"), ("default_recipe", "1"), ("hand_schedule", "1"), ("random_search", bmax), ("optuna_tpe", bmax)]
    if "pbt" in summary["methods"]:
        shown.append(("pbt", max(summary["methods"]["pbt"], key=int)))
    fig, ax = plt.subplots(figsize=(7.2, 4))
    width = 0.8 / len(shown)
    for j, (m, b) in enumerate(shown):
        vals = [summary["methods"][m][b]["per_instance"][i] for i in insts]
        unit = "members" if m == "pbt" else ("runs" if b != "1" else "run")
        ax.bar([k + j * width for k in range(len(insts))], vals, width, label=f"{m} ({b} {unit})")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(insts))], insts, fontsize=8)
    lo = min(summary["methods"][m][b]["per_instance"][i] for m, b in shown for i in insts)
    ax.set_ylim(bottom=lo * 0.95)
    ax.set_ylabel("mean test loss")
    ax.legend(fontsize=7)
    plots.append(save_figure(fig, out / "per_instance.png"))

    first = per_run[0]
    opt = first["results"]["optuna_tpe"][max(budgets)]
    runs = {"policy": first["results"]["policy"][1]["log"]}
    if opt.get("schedule_lr"):
        runs[f"best Optuna trial (of {max(budgets)})"] = {
            "schedule": [{"lr": v} for v in opt["schedule_lr"]], "eval_curve": opt["eval_curve"]}
    pbt = first["results"].get("pbt")
    if pbt:
        p_max = max(pbt)
        if pbt[p_max].get("schedule_lr"):
            runs[f"best PBT member (of {p_max})"] = {
                "schedule": [{"lr": v} for v in pbt[p_max]["schedule_lr"]], "eval_curve": pbt[p_max]["eval_curve"]}
    plots.append(trajectories(runs, out / "trajectories.png", f"{first['instance']} (seed {first['seed']})"))
    return plots


def main(argv: Optional[list[str]] = None) -> None:
    import mlflow

    from agents import tracking

    p = argparse.ArgumentParser(prog="python -m agents.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", required=True, help="agent folder (results/agents/<name>)")
    p.add_argument("--instances", nargs="*", default=None, help="instance names (default: the held-out set)")
    p.add_argument("--budgets", nargs="+", type=int, default=[1, 4, 8, 16], help="search budgets in runs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per instance (default: 3)")
    p.add_argument("--pbt-populations", nargs="*", type=int, default=[4],
                   help="PBT population sizes to run on Ray Tune (default: 4; none to skip PBT)")
    p.add_argument("--name", default=None, help="output folder name (default: the agent's name)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "compare"), help="parent folder (default: results/compare)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under results/)")
    args = p.parse_args(argv)
    command = "python -m agents.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    controller = Controller(args.agent)
    cfg = controller.env_config
    names = args.instances or [i.name for i in cfg.heldout]
    out = Path(args.out) / (args.name or Path(args.agent).name)
    storage_dir = out / "studies"
    storage_dir.mkdir(parents=True, exist_ok=True)
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    controller.check_compatible(env.actions)
    # Each instance x seed is saved when it finishes, so a crashed or stopped comparison resumes where
    # it was (the Optuna studies and PBT experiments inside one resume from their own storage too).
    key = {"agent": controller.meta.get("mlflow_run_id") or str(Path(args.agent).resolve()),
           "budgets": sorted(args.budgets), "pbt_populations": sorted(args.pbt_populations)}
    per_run = []
    for inst, seed in tqdm([(i, s) for i in names for s in range(args.seeds)], desc="compare", unit="instance x seed"):
        saved = out / "per_run" / f"{inst}-seed{seed}.json"
        results = load_saved_results(saved, key)
        if results is None:
            results = compare_one(env, controller, inst, seed, args.budgets, storage_dir, tuple(args.pbt_populations))
            save_results(saved, key, results)
        per_run.append({"instance": inst, "seed": seed, "results": results})
    summary = summarise(per_run, args.budgets)
    summary.update({"command": command, "seeds": list(range(args.seeds)), "instances": names,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    plots = write_outputs(out, summary, per_run, command, args.budgets)
    tracking.setup(args.tracking_uri, "compare")
    with mlflow.start_run(run_name=f"compare/{out.name}"):
        mlflow.log_params({"agent": args.agent, "budgets": args.budgets, "seeds": args.seeds, "instances": ",".join(names)})
        for m, by_b in summary["methods"].items():
            with mlflow.start_run(run_name=m, nested=True):
                for b, s in by_b.items():
                    mlflow.log_metric("test_loss_mean", s["test_loss_mean"], step=int(b))
                    mlflow.log_metric("compute_steps", s["compute_steps"], step=int(b))
        for f in plots + [out / "summary.md", out / "summary.json", out / "summary.csv"]:
            mlflow.log_artifact(str(f))
    print((out / "summary.md").read_text())
    print(f"written to {out}")


if __name__ == "__main__":
    main()
