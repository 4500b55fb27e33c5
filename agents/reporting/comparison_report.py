"""The comparison at matched compute, written out: summary.json / .md / .csv and the plots
against compute (the numbers come from ``comparison_summary``)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from agents.reporting.plots import lr_paths_by_instance, save_figure, trajectories
from agents.reporting.records import PairResult
from trainers.atomic_files import write_json_atomic, write_text_atomic


SPREAD_NOTE = ("one-run methods all spend the same steps;\nthey are drawn a few % apart along x "
               "so that each can be seen")


def negated_interval_errors(means: list[float], lows: list[float], highs: list[float]) -> list[list[float]]:
    """Error-bar lengths [below, above] for -x, given x's mean and interval: the ends swap."""
    below = [0.0 if math.isnan(h) else max(h - m, 0.0) for m, h in zip(means, highs)]
    above = [0.0 if math.isnan(lo) else max(m - lo, 0.0) for m, lo in zip(means, lows)]
    return [below, above]


def clamped_errors(values: list[float], lows: list[float], highs: list[float], floor: float
                   ) -> tuple[list[float], list[list[float]]]:
    """Points below `floor` drawn at `floor`, with error bars measured from where they are drawn
    (an interval end below the frame is cut by the frame, not moved)."""
    shown = [max(v, floor) for v in values]
    return shown, [[max(y - lo, 0.0) for y, lo in zip(shown, lows)], [max(hi - y, 0.0) for y, hi in zip(shown, highs)]]


def one_run_spread(position: int, count: int, step: float = 0.035) -> float:
    """x factor that sets apart one-run methods of equal compute on a log axis (stated on the plot)."""
    return 1.0 + step * (position - (count - 1) / 2)


def _save_compute_plot(fig, ax, ylabel: str, title: str, path: Path) -> Path:
    """The shared frame of the plots against compute: log steps on x, a legend."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000) if lo <= t <= hi])
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 50, 100, 200 rather than 10^2
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training steps spent per instance (log)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend() is None:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_outputs(out: Path, summary: dict, pairs: list[PairResult], command: str, budgets: list[int]) -> list[Path]:
    """summary.json, summary.csv, summary.md and every plot; returns the plots' paths."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.csv", summary_csv(summary))
    write_text_atomic(out / "summary.md", summary_markdown(summary, command))
    one_run = [m for m, by_b in summary["methods"].items() if list(by_b) == ["1"]]  # spread apart on x
    return [loss_plot(summary, out), paired_plot(summary, one_run, out), gain_plot(summary, one_run, out),
            profile_plot(summary, out), per_instance_plot(summary, pairs, budgets, out),
            trajectories_plot(pairs[0], budgets, out), policy_lr_paths_plot(pairs, out)]


def _improvement_table(summary: dict) -> list[str]:
    poi = summary.get("probability_policy_better")
    if not poi:
        return []
    lines = ["", "Probability that the policy's run beats the method's (lower test loss): "
                 + summary["probability_policy_better_method"] + ". 0.5 = no better, no worse.", "",
             "| method | budget (runs) | P(policy better) [95% interval] |", "|---|---|---|"]
    for m, by_b in poi.items():
        for b, x in by_b.items():
            lines.append(f"| {m} | {b} | {x['p']:.2f} [{x['ci95_low']:.2f}, {x['ci95_high']:.2f}] |")
    return lines + ["", "Performance profiles (share of runs above each search-gain score): performance_profile.png", ""]


def profile_plot(summary: dict, out: Path) -> Path:
    """rliable's performance profiles on the search-gain scale: for each method (one-run methods,
    and each search at its largest budget), the share of its runs scoring above tau."""
    import matplotlib.pyplot as plt

    prof = summary["performance_profile"]
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for j, (m, by_b) in enumerate(prof["by_method"].items()):
        b = max(by_b, key=int)
        ax.plot(prof["taus"], by_b[b], lw=3 if m == "policy" else 1.5, color=f"C{j}",
                label=m + ("" if b == "1" else f" (best of {b})"))
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"search gain captured, tau (0 = default recipe, 1 = {summary['search_gain_reference']})")
    ax.set_ylabel("share of runs above tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out / "performance_profile.png")


def summary_csv(summary: dict) -> str:
    table = io.StringIO()
    w = csv.writer(table)
    w.writerow(["method", "budget_runs", "compute_steps", "test_loss_mean", "test_loss_ci95", "n_runs"])
    for m, by_b in summary["methods"].items():
        for b, s in by_b.items():
            w.writerow([m, b, f"{s['compute_steps']:.0f}", f"{s['test_loss_mean']:.5f}", f"{s['test_loss_ci95']:.5f}", s["n_runs"]])
    return table.getvalue()


def cost_text(worker_seconds: dict | None) -> str:
    """The runner's worker_seconds in words: what the saved results cost across every invocation."""
    if not worker_seconds or not worker_seconds.get("entries_timed"):
        return "cost of the saved results not recorded"
    w = worker_seconds
    untimed = w["entries"] - w["entries_timed"]
    return (f"the saved results took {w['seconds'] / 60:.1f} worker-minutes across invocations (tasks' own times, "
            "summed)"
            + (f" ({untimed} of {w['entries']} entries saved before tasks were timed, not counted)" if untimed else ""))


def summary_markdown(summary: dict, command: str) -> str:
    lines = [f"# Comparison at matched compute", "", f"Command: `{command}`", ""]
    if summary.get("machine"):
        m = summary["machine"]
        lines += [f"Machine: {m['platform']}, {m['cpu_count']} CPUs, GPU {m['cuda'] or 'none'}; torch {m['torch']}; "
                  f"commit {m['git_commit']}; written {summary.get('measured_at')}, "
                  f"{summary.get('wall_seconds_this_invocation', float('nan')):.0f} s in this invocation; "
                  f"{cost_text(summary.get('worker_seconds'))}", ""]
    lines += (_method_table(summary) + _gain_table(summary) + _improvement_table(summary) + _failures(summary)
              + _per_instance_table(summary))
    return "\n".join(lines) + "\n"


def _method_table(summary: dict) -> list[str]:
    lines = [
             "| method | budget (runs) | training steps | test loss (mean ± 95% t over runs) | policy − this, paired "
             "(mean over instances [95% two-level bootstrap]; t [95% t over instance means]) | runs |",
             "|---|---|---|---|---|---|"]
    for m, by_b in summary["methods"].items():
        for b, s in by_b.items():
            paired = "" if m == "policy" else (f"{s['policy_minus_this_mean']:+.4f} [{s['policy_minus_this_ci95_low']:+.4f}, "
                                               f"{s['policy_minus_this_ci95_high']:+.4f}]; t [{s['policy_minus_this_t95_low']:+.4f}, "
                                               f"{s['policy_minus_this_t95_high']:+.4f}]")
            lines.append(f"| {m} | {b} | {s['compute_steps']:.0f} | {s['test_loss_mean']:.4f} ± {s['test_loss_ci95']:.4f} "
                         f"| {paired} | {s['n_runs']} |")
    undefined = math.isnan(summary["search_gain_captured"]["policy"]["1"]["iqm"])
    lines += ["", f"optuna_budget_to_match_policy: {summary['optuna_budget_to_match_policy']} "
                  + ("(undefined: no instance had a search gain to capture) " if undefined else "")
                  + "(smallest Optuna budget whose search gain captured (IQM over instances) is at least the policy's "
                  "single run's; "
                  "null = none of the budgets tried)",
              "", "The paired column is the policy's test loss minus this method's on the same instance and seed: "
                  "negative means the policy's single run was better. Its first interval resamples instances, then "
                  "seeds within them (runs that share an instance are not independent); a percentile bootstrap over "
                  "few instances runs narrow, so beside it is a t interval over the instance means. A difference is "
                  "clear only where both exclude 0. The test-loss column's interval "
                  "is a t interval over runs as if they were independent: it describes the spread, it does not "
                  "compare methods.",]
    return lines


def _gain_table(summary: dict) -> list[str]:
    lines = [
"", f"## Search gain captured (1.0 = {summary['search_gain_reference']}, 0 = the default recipe)", "",
              f"{summary['search_gain_interval']}.", "",
              "The search's gain on each instance, the score's denominator (default recipe − search, test loss, "
              "mean over seeds; where it is small, a small difference in loss is a large score): "
              + ", ".join(f"{i} {g['default_recipe_minus_search']:.4f} ({100 * g['relative_to_default_recipe']:.1f}% "
                          f"of the default recipe's loss)" for i, g in summary.get("search_gain_loss", {}).items())
              + ".", "",
              "| method | budget | IQM [95% interval] | mean over instances [95% interval] | per instance |",
              "|---|---|---|---|---|"]
    for m, by_b in summary["search_gain_captured"].items():
        for b, g in by_b.items():
            per = ", ".join(f"{i} {v:+.2f}" for i, v in g["per_instance"].items())
            lines.append(f"| {m} | {b} | {g['iqm']:+.2f} [{g['ci95_low']:+.2f}, {g['ci95_high']:+.2f}] "
                         f"| {g['mean_over_instances']:+.2f} [{g['mean_ci95_low']:+.2f}, {g['mean_ci95_high']:+.2f}] "
                         f"| {per} |")
    return lines


def _failures(summary: dict) -> list[str]:
    lines: list[str] = []
    if summary["failed_runs_scored_as_base_model"]:
        lines += ["", "Selected runs without a finite test loss, scored as the base model: "
                  + ", ".join(f"{x['method']}@{x['budget']} on {x['instance']} seed {x['seed']}"
                              for x in summary["failed_runs_scored_as_base_model"])]
    errored = [x for x in summary.get("pbt_errored_members", []) if x["errored"]]
    unrecorded = [x for x in summary.get("pbt_errored_members", []) if x["errored"] is None]
    if errored:
        lines += ["", "PBT populations with members that errored (selected among the others): "
                  + ", ".join(f"{x['errored']} of {x['population']} on {x['instance']} seed {x['seed']}"
                              for x in errored)]
    if unrecorded:
        lines += ["", f"PBT populations saved before errored members were counted (not recorded): {len(unrecorded)}"]
    return lines


def _per_instance_table(summary: dict) -> list[str]:
    lines: list[str] = []
    cols = [f"{m}@{max(by_b, key=int)}" for m, by_b in summary["methods"].items()]
    lines += ["", "## Per instance: test loss (task metric), mean over seeds, each method at its largest budget", "",
              "| instance | metric | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for inst, row in summary["per_instance"].items():
        cells = []
        for c in cols:
            x = row["methods"][c]
            metric = "" if x["test_metric"] is None else f" ({x['test_metric']:.3f}" + (
                f", {x['n_metric']} of {x['n_seeds']} seeds" if x["n_metric"] < x["n_seeds"] else "") + ")"
            cells.append(f"{x['test_loss']:.3f}{metric}")
        lines.append(f"| {inst} | {row['metric_name'] or '—'} | " + " | ".join(cells) + " |")
    lines += [""]
    return lines


def loss_plot(summary: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for m, by_b in summary["methods"].items():
        xs = [s["compute_steps"] for s in by_b.values()]
        ys = [s["test_loss_mean"] for s in by_b.values()]
        es = [0 if math.isnan(s["test_loss_ci95"]) else s["test_loss_ci95"] for s in by_b.values()]
        ax.errorbar(xs, ys, yerr=es, marker="o" if len(xs) > 1 else "*", ms=6 if len(xs) > 1 else 12, capsize=3, label=m)
    return _save_compute_plot(fig, ax, "test loss of the selected run",
                              "test loss against compute (95% t over runs: their spread, not a comparison)",
                              out / "loss_vs_compute.png")


def paired_plot(summary: dict, one_run: list[str], out: Path) -> Path:
    """The instances' spread swamps the loss plot; paired on instance and seed, it cancels out."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    policy_steps = summary["methods"]["policy"]["1"]["compute_steps"]
    ax.axhline(0.0, color="C0", lw=1)
    ax.plot([policy_steps], [0.0], "*", ms=14, color="C0", label="policy (one run)")
    for j, (m, by_b) in enumerate(summary["methods"].items()):
        if m == "policy":
            continue
        spread = one_run_spread(one_run.index(m), len(one_run)) if m in one_run else 1.0
        xs = [s["compute_steps"] * spread for s in by_b.values()]
        means = [s["policy_minus_this_mean"] for s in by_b.values()]
        es = negated_interval_errors(means, [s["policy_minus_this_ci95_low"] for s in by_b.values()],
                                     [s["policy_minus_this_ci95_high"] for s in by_b.values()])
        ax.errorbar(xs, [-v for v in means], yerr=es, marker="o", ms=5, capsize=3, color=f"C{j}", label=m)
    ax.text(0.01, 0.98, SPREAD_NOTE, transform=ax.transAxes, fontsize=7, va="top")
    return _save_compute_plot(fig, ax, "test loss minus the policy's (paired)",
                              "above 0: the policy's single run was better (95%, instances then seeds)",
                              out / "paired_vs_compute.png")


def gain_plot(summary: dict, one_run: list[str], out: Path) -> Path:
    """The headline: how much of the big search's gain each method gets, against what it spent.
    The one-run methods share one compute: they are spread a little along x so each can be seen,
    and a point below the frame (a search's first random trial can lose far more than the default
    recipe) is drawn on its edge with its value written beside it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    y_lo, y_hi = -1.0, 1.6
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.axhline(0.0, color="grey", lw=1)
    below: list[str] = []
    for j, (m, by_b) in enumerate(summary["search_gain_captured"].items()):
        spread = one_run_spread(one_run.index(m), len(one_run)) if m in one_run else 1.0
        xs = [summary["methods"][m][b]["compute_steps"] * spread for b in by_b]
        ys = [g["iqm"] for g in by_b.values()]
        star = m == "policy"
        shown, err = clamped_errors(ys, [g["ci95_low"] for g in by_b.values()], [g["ci95_high"] for g in by_b.values()],
                                    y_lo + 0.04)
        ax.errorbar(xs, shown, yerr=err, marker="*" if star else "o", ms=15 if star else 5, capsize=3, color=f"C{j}",
                    label=m + (" (one run)" if m in one_run else ""), zorder=3 if star else 2)
        below += [f"{m}@{b} {y:+.2f}" for b, y in zip(by_b, ys) if y < y_lo]
    ax.set_ylim(y_lo, y_hi)
    ax.legend(fontsize=7, loc="lower right")
    steps = [x["compute_steps"] for by_b in summary["methods"].values() for x in by_b.values()]
    ax.set_xlim(min(steps) * 0.85, max(steps) * 1.2)  # set, not found: every score is nan where no instance had a gain
    ax.text(0.01, 0.98, SPREAD_NOTE + ("\nbelow the frame, drawn on its edge: " + ", ".join(below) if below else ""),
            transform=ax.transAxes, fontsize=7, va="top")
    return _save_compute_plot(fig, ax, "search gain captured (IQM, 95% interval)",
                              f"1 = {summary['search_gain_reference']}, 0 = default recipe", out / "gain_vs_compute.png")


def per_instance_plot(summary: dict, pairs: list[PairResult], budgets: list[int], out: Path) -> Path:
    import matplotlib.pyplot as plt

    insts = sorted({p.instance for p in pairs})
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
    return save_figure(fig, out / "per_instance.png")


def trajectories_plot(first: PairResult, budgets: list[int], out: Path) -> Path:
    """The first pair's lr and validation curves: the policy, the best Optuna trial, the best PBT member."""
    runs = {"policy": first.one_run("policy").log}
    opt = first.results["optuna_tpe"][max(budgets)]
    if opt.schedule_lr:
        runs[f"best Optuna trial (of {max(budgets)})"] = {"schedule": [{"lr": v} for v in opt.schedule_lr],
                                                           "eval_curve": opt.eval_curve}
    pbt = first.results.get("pbt")
    if pbt:
        p_max = max(pbt)
        if pbt[p_max].schedule_lr:
            runs[f"best PBT member (of {p_max})"] = {"schedule": [{"lr": v} for v in pbt[p_max].schedule_lr],
                                                     "eval_curve": pbt[p_max].eval_curve}
    return trajectories(runs, out / "trajectories.png", f"{first.instance} (seed {first.seed})")


def policy_lr_paths_plot(pairs: list[PairResult], out: Path) -> Path:
    """The policy seen controlling: its lr path from each seed's drawn start (step 0: its first
    decision acts before the first step), on every instance, beside the recipe tuned once on the
    training instances."""
    panels: dict[str, list[tuple[str, list[int], list[float], str]]] = {}
    for p in pairs:
        new_panel = p.instance not in panels
        lines = panels.setdefault(p.instance, [])
        log = p.one_run("policy").log
        start = log["initial_hparams"]["lr"]
        lrs = [start] + [h["lr"] for h in log["schedule"]]
        lines.append((f"policy, seed {p.seed} (drawn start {start:.1e})", list(range(len(lrs))), lrs, "-"))
        recipe = p.results.get("transferred_recipe", {}).get(1)
        if new_panel and recipe and recipe.log:  # the same recipe on every seed: drawn once
            rl = [h["lr"] for h in recipe.log["schedule"]]
            lines.append(("transferred recipe", list(range(1, len(rl) + 1)), rl, "k--"))
    return lr_paths_by_instance(panels, out / "policy_lr_paths.png",
                                "the policy's learning rate from each seed's drawn start (step 0), held-out instances")
