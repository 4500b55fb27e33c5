"""Headroom and the lr grid, written out: a markdown table and a plot each (the numbers come from
agents/experiments/open_loop.py and lr_grid.py)."""
from __future__ import annotations

import math
from pathlib import Path

from agents.reporting.comparison_report import cost_text
from agents.reporting.plots import save_figure
from trainers.atomic_files import write_text_atomic


def write_lr_grid_outputs(out: Path, name: str, result: dict) -> None:
    """<name>_lr_grid.md: each instance's best constant lr; <name>_lr_grid.png: validation loss against lr."""
    import matplotlib.pyplot as plt

    lines = [f"# Best constant learning rate per instance on {name}", "", f"Command: `{result['command']}`", "",
             f"Each lr of the grid ({', '.join(f'{x:.2g}' for x in result['lr_grid'])}) held for the whole episode "
             f"with the default recipe's weight decay and clipping, {len(result['seeds'])} seed(s) per instance "
             "(same batches for every lr). Best = lowest final validation loss, mean over seeds; refined = vertex of "
             "a parabola in log10(lr) through the best grid point and its neighbours.", "",
             "| instance | split | best lr (grid) | best lr (refined) | at grid edge | val loss at best | test loss at best |",
             "|---|---|---|---|---|---|---|"]
    for inst, s in result["instances"].items():
        i = s["lrs"].index(s["best_lr_grid"])
        lines.append(f"| {inst} | {s['split']} | {s['best_lr_grid']:.1e} | {s['best_lr_refined']:.1e} | "
                     f"{'yes' if s['at_grid_edge'] else 'no'} | {s['mean_val_loss'][i]:.3f} | {s['mean_test_loss'][i]:.3f} |")
    lines += ["", f"Spread of the best constant lr across the instances: {result['spread_grid']:.1f}x on the grid, "
              f"{result['spread_refined']:.1f}x refined."]
    write_text_atomic(out / f"{name}_lr_grid.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, (inst, s) in enumerate(result["instances"].items()):
        best = min(v for v in s["mean_val_loss"] if math.isfinite(v))
        ax.plot(s["lrs"], [v / best for v in s["mean_val_loss"]], "o-" if s["split"] == "train" else "s--",
                ms=4, color=f"C{i % 10}", label=f"{inst} ({s['split']})")
        ax.axvline(s["best_lr_refined"], color=f"C{i % 10}", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_ylim(0.95, 1.6)
    ax.set_xlabel("constant lr (log); dotted: refined best")
    ax.set_ylabel("final validation loss / instance's best (mean over seeds)")
    ax.set_title(f"{name}: best constant lr per instance (spread {result['spread_refined']:.1f}x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / f"{name}_lr_grid.png")


def write_headroom_outputs(out: Path, name: str, result: dict) -> None:
    """<name>.md: the per-instance table and the aggregate; <name>.png: test loss against constant lr."""
    import matplotlib.pyplot as plt

    lines = [f"# Headroom on {name}", "", f"Command: `{result['command']}`", "",
             "Test loss averaged over the seeds' drawn starts; the best open-loop schedule is chosen by final "
             "validation loss; the best constant lr is the geometric mean over seeds of the lr (as run, after "
             "clipping to the hard bounds) with the best validation loss. Exact match where the task has one.", "",
             "| instance | start lrs | hold | best open-loop | default recipe | best constant lr | exact match: base / hold / best |",
             "|---|---|---|---|---|---|---|"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    for inst, s in result["instances"].items():
        lrs = ", ".join(f"{x:.1e}" for x in s["start_lrs"])
        lines.append(f"| {inst} | {lrs} | {fmt(s['hold_test_loss'])} | {fmt(s['best_open_loop_test_loss'])} | "
                     f"{fmt(s['default_recipe_test_loss'])} | {s['best_constant_lr']:.1e} | "
                     f"{fmt(s['base_test_metric'])} / {fmt(s['hold_test_metric'])} / {fmt(s['best_test_metric'])} |")
    agg = result["aggregate"]
    lines += ["", "Across instances (" + agg["interval"] + "):", ""]
    for ref, label in (("hold", "holding the start"), ("default_recipe", "the default recipe")):
        a = agg[f"best_open_loop_gain_over_{ref}"]
        lines.append(f"- best open-loop schedule over {label}: IQM gain {a['iqm']:+.1%} "
                     f"[{a['ci95_low']:+.1%}, {a['ci95_high']:+.1%}] of the reference's test loss")
    lines.append(f"- best constant lr: the largest instance's is {agg['best_constant_lr_spread']:.1f}x the smallest's")
    write_text_atomic(out / f"{name}.md", "\n".join(lines) + "\n")
    fig, (ax, ax_abs) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, inst in enumerate(result["instances"]):
        color = f"C{i}"
        runs = [r for r in result["runs"] if r["instance"] == inst]
        ys = []
        multipliers = sorted({v["multiplier"] for r in runs for k, v in r["runs"].items() if k.startswith("constant")})
        for m in multipliers:
            vals = [r["runs"][f"constant x{m:g}"]["test_loss"] / r["runs"]["hold"]["test_loss"] for r in runs]
            vals = [v for v in vals if math.isfinite(v)]
            ys.append(sum(vals) / len(vals) if vals else float("nan"))
        ax.plot(multipliers, ys, "o-", label=inst, ms=4, color=color)
        # the same runs against the lr as run: where each instance's best constant lr lies
        best = min(v["test_loss"] for r in runs for k, v in r["runs"].items()
                   if k.startswith("constant") and math.isfinite(v["test_loss"]))
        for j, r in enumerate(runs):
            pts = sorted((v["lr_first"], v["test_loss"] / best) for k, v in r["runs"].items()
                         if k.startswith("constant") and math.isfinite(v["test_loss"]))
            ax_abs.plot(*zip(*pts), "o-", ms=3, lw=1, alpha=0.7, color=color, label=inst if j == 0 else None)
        ax_abs.axvline(result["instances"][inst]["best_constant_lr"], color=color, ls=":", lw=1.5)
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("constant lr as a multiple of the drawn start (log)")
    ax.set_ylabel("test loss / hold's test loss (mean over seeds)")
    ax.set_title("below 1 = better than holding the start")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax_abs.set_xscale("log")
    ax_abs.set_ylim(0.9, 3.0)
    ax_abs.set_xlabel("constant lr as run (log); dotted: best constant lr (geometric mean over seeds)")
    ax_abs.set_ylabel("test loss / instance's best constant run")
    ax_abs.set_title("one line per seed (drawn start)")
    ax_abs.grid(alpha=0.3)
    fig.suptitle(f"headroom on {name}: constant learning rates")
    save_figure(fig, out / f"{name}.png")


def write_transfer_outputs(out: Path, name: str, result: dict) -> None:
    """<name>.md: per held-out instance, every static choice against the transferred recipe, and the
    summary; <name>.png: test loss against constant lr per instance, the transferred lr marked."""
    import matplotlib.pyplot as plt

    s, insts = result["summary"], result["instances"]
    search = s["search_reference"].replace("optuna_tpe best of ", "Optuna-")
    fmt = lambda x: "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"  # noqa: E731
    captured = result["transferred_recipe_gain_captured_per_instance"]
    g = s["transferred_recipe_gain_captured"]
    lines = [f"# Headroom over the transferred recipe on {name}", "", f"Command: `{result['command']}`", "",
             f"{s['n_train_instances']} training and {s['n_heldout_instances']} held-out instances "
             f"({s['n_heldout_unseen_family']} from families no training instance uses). Test loss, mean over "
             f"{len(result['seeds'])} seed(s). Transferred recipe: lr {result['transferred_recipe']['recipe']['lr']:.2e}, "
             f"tuned by {result['transferred_recipe']['n_trials']} Optuna trials on the training instances. Captured: "
             f"(default - transferred) / (default - {search}); separation: ({'default'} - {search}) / default.", "",
             f"| instance | unseen family | tags | best constant lr | best open-loop | default recipe | transferred | "
             f"{search} | separation | captured |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in insts.items():
        lines.append(f"| {n} | {'yes' if r['unseen_family'] else 'no'} | {', '.join(r['tags'])} | "
                     f"{r['best_constant_lr']:.1e}{' (edge)' if r['best_constant_lr_at_grid_edge'] else ''} | "
                     f"{fmt(r['best_open_loop_test_loss'])} | {fmt(r['default_recipe_test_loss'])} | "
                     f"{fmt(r['transferred_recipe_test_loss'])} | {fmt(r[next(k for k in r if k.startswith('optuna_best'))])} | "
                     f"{r['search_gain_over_default']:+.1%} | {fmt(captured.get(n))} |")
    lines += ["", f"- best constant lr across held-out instances: the largest is {s['best_constant_lr_spread_heldout']:.1f}x "
              "the smallest", f"- transferred recipe's share of the search's gain: IQM {g['iqm']:.2f} "
              f"[{g['ci95_low']:.2f}, {g['ci95_high']:.2f}] ({s['gain_captured_interval']})",
              f"- held-out instances where the search gains under {s['separation_threshold']:.0%} of the default recipe's "
              f"loss: {', '.join(s['instances_below_separation']) or 'none'}"]
    write_text_atomic(out / f"{name}.md", "\n".join(lines) + "\n")
    cols = 4
    rows = max(1, math.ceil(len(insts) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    lr_t = result["transferred_recipe"]["recipe"]["lr"]
    for ax, (n, r) in zip(axes.flat, insts.items()):
        pts = [(lr, t) for lr, t in zip(r["lr_grid"], r["lr_grid_test_loss"]) if math.isfinite(t)]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3)
        ax.axvline(lr_t, color="C3", ls="--", lw=1.2, label="transferred recipe's lr")
        ax.axvline(r["best_constant_lr"], color="C2", ls=":", lw=1.2, label="best constant lr")
        ax.axhline(r["default_recipe_test_loss"], color="grey", lw=0.8, label="default recipe")
        ax.set_xscale("log")
        finite = [t for _, t in pts]
        if finite:
            ax.set_ylim(min(finite) * 0.97, min(max(finite), 2.0 * min(finite)) * 1.03)
        ax.set_title(n + (" (unseen family)" if r["unseen_family"] else ""), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(insts):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("constant lr, held for the whole episode (log)")
    fig.supylabel("test loss")
    fig.suptitle(f"{name}: test loss against lr per held-out instance (transferred lr dashed)")
    save_figure(fig, out / f"{name}.png")


def write_probe_outputs(out: Path, name: str, result: dict) -> None:
    """<name>.md: per training instance, the paired return of each fixed lr correction; <name>.png:
    those returns against the correction, one line per instance and seed (agents/experiments/residual_probe.py)."""
    import matplotlib.pyplot as plt

    s = result["summary"]
    ks = [k for k in result["probe_log2"] if k != 0.0]
    several = len(result["seeds"]) > 1
    num = lambda x, f="+.4f": "n/a" if x is None or x != x else format(x, f)  # noqa: E731
    lines = [f"# Paired returns of fixed lr corrections on {result['config']} (training instances)", "",
             f"Command: `{result['command']}`", "",
             f"From the recipe's start, the recipe's lr x 2^k set at the first decision and then held, on "
             f"{len(result['instances'])} training instances x {len(result['seeds'])} batch seed(s). A return is the "
             "final validation advantage over the recipe's own run on the same batches, per unit of the initial "
             "validation loss (what PPO learns from); higher is better; a diverged run's is the divergence penalty. "
             f"k = 0 is the recipe, whose return was at most {s['recipe_return_max_abs']:.1e} in size. Cells: mean "
             "return over the seeds.", "",
             "| instance | " + " | ".join(f"k={k:+g}" for k in ks) +
             " | best k per seed (0 = recipe) | cross-seed gain | oracle gain | imitation target k |",
             "|---|" + "---|" * len(ks) + "---|---|---|---|"]
    for inst, p in s["per_instance"].items():
        cells = " | ".join(f"{p['mean_return'][f'{k:+g}']:+.4f}" + (" (diverged)" if k in p.get("diverged_log2", []) else "")
                           for k in ks)
        lines.append(f"| {inst} | {cells} | {', '.join(f'{k:+g}' for k in p['best_log2_per_seed'])} | "
                     f"{num(p.get('cross_seed_gain'))} | {p['oracle_gain']:+.4f} | {p['target_log2']:+.2f} |")
    lo, hi = s["oracle_gain_ci95"]
    lines += ["",
              f"- cross-seed gain (k chosen on one seed, the recipe among the candidates, scored on the others): median "
              f"{num(s['cross_seed_gain_median'])}, mean {num(s['cross_seed_gain_mean'])}" +
              ("" if several else " (one seed: not measured)"),
              f"- oracle gain (best mean over the seeds, chosen and scored on the same runs, so >= 0 even on pure noise): "
              f"IQM {num(s['oracle_gain_iqm'])} [{num(lo)}, {num(hi)}], median {num(s['oracle_gain_median'])}",
              f"- spread of the returns (k != 0, cells with no divergence; ddof 1): sd {num(s['return_sd'], '.4f')}; "
              f"between batch seeds for the same instance and k: sd {num(s['seed_noise_sd'], '.4f')}; share of the variance "
              f"that instance and k explain: {num(s['explainable_share'], '.2f')}; within instances, the share k explains: "
              f"{num(s['correction_share_within_instance'], '.2f')}; cells with a diverged run: {s['cells_with_a_divergence']}",
              "- the best k's direction (up, down or the recipe) is the same on every seed on " +
              (f"{s['best_direction_agrees_across_seeds']:.0%} of the instances" if several else "n/a (one seed)"),
              "- imitation target k: the peak of a parabola through the instance's mean returns against k (the recipe's 0 "
              "included), 0 where no correction beat the recipe: what `--imitate` this file teaches",
              f"- intervals: {s['interval']}",
              f"- machine: {result['machine']['cpu_count']} CPUs, {result['machine']['cuda'] or 'no GPU'}, torch "
              f"{result['machine']['torch']}, load {result['machine']['loadavg_1_5_15min']}; wall time of this invocation "
              f"{result['seconds_this_invocation']:.0f} s (records made earlier are read back, not rerun); "
              f"{cost_text(result.get('worker_seconds'))}"]
    write_text_atomic(out / f"{name}.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, inst in enumerate(result["instances"]):
        for r in (r for r in result["runs"] if r["instance"] == inst):
            pts = sorted((v["log2"], v["paired_return"]) for v in r["runs"].values() if not v["diverged"])
            ax.plot([k for k, _ in pts], [y for _, y in pts], "o-" if r["seed"] == 0 else "s--", ms=3,
                    color=f"C{i % 10}", label=inst if r["seed"] == 0 and len(result["instances"]) <= 12 else None)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("lr correction k (the recipe's lr x 2^k, from the first decision)")
    ax.set_ylabel("paired return (advantage over the recipe)")
    ax.set_title(f"{result['config']}: what a fixed lr correction earns\n(solid: seed 0; dashed: other seeds; "
                 "diverged runs left out)", fontsize=9)
    ax.grid(alpha=0.3)
    if len(result["instances"]) <= 12:
        ax.legend(fontsize=7)
    save_figure(fig, out / f"{name}.png")
