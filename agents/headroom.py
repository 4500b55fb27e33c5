"""Headroom: how much a perfect controller could gain on each held-out instance, before any learner
is judged on it.

    python -m agents.headroom --config smollm2_cpu [--seeds 3] [--workers 2] [--json]

For every held-out instance and seed (each seed draws its own start lr), runs the start held
(hold), constant multiples of it (x1/16 .. x16), warmup-then-cosine shapes at a few peaks, and the
default recipe, all through the shared episode loop (agents/evaluation/headroom.py). Writes
results/headroom/<config>.json (per instance: hold_test_loss, best_open_loop_test_loss,
default_recipe_test_loss, base_test_metric, best_test_metric, best_constant_lr, each averaged over
the starts tried), a markdown table, and a plot of test loss against the lr multiplier. Each
instance x seed is saved when it finishes; rerunning the command resumes.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Optional

from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, ConfigError, load_config

_worker_env = None


def _init_worker(cfg_dict: dict) -> None:
    global _worker_env
    from envs.finetune_env import FineTuneEnv
    from trainers.config import parse_config

    _worker_env = FineTuneEnv(parse_config(cfg_dict), split="all", evaluate_test=True)


def _job(instance: str, seed: int) -> dict:
    from agents.evaluation.headroom import schedules_from

    return schedules_from(_worker_env, instance, seed)


def _lr_grid_job(instance: str, seed: int) -> dict:
    from agents.evaluation.headroom import constant_lr_sweep

    return constant_lr_sweep(_worker_env, instance, seed)


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.headroom", description=__doc__)
    p.add_argument("--config", default="smollm2_cpu", help="instance set (default: smollm2_cpu)")
    p.add_argument("--instances", nargs="*", default=None,
                   help="instance names (default: the held-out set; with --lr-grid, every instance)")
    p.add_argument("--lr-grid", action="store_true",
                   help="instead: hold each lr of an absolute grid (1e-5 .. 1e-2, half-decade steps) on every "
                        "instance, and report each instance's best constant lr (writes <config>_lr_grid.*)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds (= drawn starts) per instance (default: 3)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes, one core each (default: 2)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "headroom"), help="folder (default: results/headroom)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def headroom(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict[str, Any]:
    import json
    import time

    from agents.evaluation.headroom import aggregate, record_key, summarise_instance
    from trainers.atomic_files import write_json_atomic
    from trainers.provenance import machine_info, utc_now

    cfg = load_config(args.config)
    if args.lr_grid:
        return lr_grid(cfg, args, argv)
    names, out = _checked_names(cfg, args)

    t0 = time.time()
    records = run_records(cfg, names, args.seeds, args.workers, out / cfg.name / "per_run", record_key, _job)
    summary = {n: summarise_instance([records[(n, s)] for s in range(args.seeds)]) for n in names}
    command = "python -m agents.headroom " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"config": cfg.name, "command": command, "machine": machine_info(), "measured_at": utc_now(),
              "seconds_this_invocation": round(time.time() - t0, 1), "seeds": list(range(args.seeds)),
              "instances": summary, "aggregate": aggregate(summary),
              "runs": [records[(n, s)] for n in names for s in range(args.seeds)]}
    write_json_atomic(out / f"{cfg.name}.json", result)
    write_outputs(out, cfg.name, result)
    if args.json:
        print(json.dumps({n: {k: v for k, v in s.items() if not isinstance(v, list)} for n, s in summary.items()}))
    else:
        print((out / f"{cfg.name}.md").read_text())
    return result


def _checked_names(cfg, args) -> tuple[list[str], Path]:
    names = args.instances or [i.name for i in (cfg.heldout if not args.lr_grid else cfg.train + cfg.heldout)]
    if not names:
        raise ConfigError(f"instance set {cfg.name!r} has no held-out instances: name some with --instances")
    for n in names:
        cfg.instance(n)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    return names, out


def run_records(cfg, names: list[str], seeds: int, workers: int, per_run: Path, key_of, job) -> dict:
    """Every (instance, seed) record, from per_run/ where its saved key still matches, else computed
    in worker processes (one core each) and saved as each finishes: rerunning resumes."""
    import json
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from trainers.atomic_files import write_json_atomic

    records: dict[tuple[str, int], dict] = {}
    todo = []
    keys = {inst: key_of(cfg, inst) for inst in tqdm(names, desc="checking data", unit="instance")}
    for inst in names:
        for seed in range(seeds):
            path = per_run / f"{inst}-seed{seed}.json"
            saved = json.loads(path.read_text()) if path.is_file() else None
            if saved and saved.get("key") == keys[inst]:
                records[(inst, seed)] = saved["record"]
            else:
                todo.append((inst, seed))
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(cfg.model_dump(mode="json"),)) as pool:
            futures = {pool.submit(job, inst, seed): (inst, seed) for inst, seed in todo}
            try:
                for fut in tqdm(as_completed(futures), total=len(futures), desc=per_run.parent.name,
                                unit="instance x seed"):
                    inst, seed = futures[fut]
                    rec = fut.result()
                    write_json_atomic(per_run / f"{inst}-seed{seed}.json", {"key": keys[inst], "record": rec},
                                      indent=None)
                    records[(inst, seed)] = rec
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # what finished is saved; rerun to resume
                raise
    return records


def lr_grid(cfg, args: argparse.Namespace, argv: Optional[list[str]]) -> dict[str, Any]:
    """The best constant lr of every instance on an absolute grid: how far apart instances' best
    static learning rates lie (the realistic-tasks issue asks for at least 10x across the family)."""
    import json
    import time

    from agents.evaluation.headroom import LR_GRID, best_lr_on_grid, record_key
    from trainers.atomic_files import write_json_atomic
    from trainers.provenance import machine_info, utc_now

    names, out = _checked_names(cfg, args)
    key_of = lambda c, inst: dict(record_key(c, inst), lr_grid=list(LR_GRID))  # noqa: E731
    t0 = time.time()
    records = run_records(cfg, names, args.seeds, args.workers, out / f"{cfg.name}_lr_grid" / "per_run", key_of,
                          _lr_grid_job)
    summary = {n: best_lr_on_grid([records[(n, s)] for s in range(args.seeds)]) for n in names}
    for n, s in summary.items():
        s["split"] = "train" if n in {i.name for i in cfg.train} else "heldout"
    refined = {n: s["best_lr_refined"] for n, s in summary.items()}
    grid = {n: s["best_lr_grid"] for n, s in summary.items()}
    command = "python -m agents.headroom " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"config": cfg.name, "command": command, "machine": machine_info(), "measured_at": utc_now(),
              "seconds_this_invocation": round(time.time() - t0, 1), "seeds": list(range(args.seeds)),
              "lr_grid": list(LR_GRID), "selection": "lowest final validation loss, mean over seeds",
              "spread_grid": max(grid.values()) / min(grid.values()),
              "spread_refined": max(refined.values()) / min(refined.values()),
              "instances": summary, "runs": [records[(n, s)] for n in names for s in range(args.seeds)]}
    write_json_atomic(out / f"{cfg.name}_lr_grid.json", result)
    write_lr_grid_outputs(out, cfg.name, result)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "machine")}))
    else:
        print((out / f"{cfg.name}_lr_grid.md").read_text())
    return result


def write_lr_grid_outputs(out: Path, name: str, result: dict) -> None:
    import matplotlib.pyplot as plt

    from agents.reporting.plots import save_figure
    from trainers.atomic_files import write_text_atomic

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


def write_outputs(out: Path, name: str, result: dict) -> None:
    import matplotlib.pyplot as plt

    from agents.evaluation.headroom import CONSTANT_MULTIPLIERS
    from agents.reporting.plots import save_figure
    from trainers.atomic_files import write_text_atomic

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
        for m in CONSTANT_MULTIPLIERS:
            vals = [r["runs"][f"constant x{m:g}"]["test_loss"] / r["runs"]["hold"]["test_loss"] for r in runs]
            vals = [v for v in vals if math.isfinite(v)]
            ys.append(sum(vals) / len(vals) if vals else float("nan"))
        ax.plot(CONSTANT_MULTIPLIERS, ys, "o-", label=inst, ms=4, color=color)
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


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), lambda args: headroom(args, argv), argv)


if __name__ == "__main__":
    main()
