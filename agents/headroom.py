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


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.headroom", description=__doc__)
    p.add_argument("--config", default="smollm2_cpu", help="instance set (default: smollm2_cpu)")
    p.add_argument("--instances", nargs="*", default=None, help="instance names (default: the held-out set)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds (= drawn starts) per instance (default: 3)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes, one core each (default: 2)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "headroom"), help="folder (default: results/headroom)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def headroom(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict[str, Any]:
    import json
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    from agents.evaluation.headroom import aggregate, record_key, summarise_instance
    from trainers.atomic_files import write_json_atomic
    from trainers.provenance import machine_info, utc_now

    cfg = load_config(args.config)
    names = args.instances or [i.name for i in cfg.heldout]
    if not names:
        raise ConfigError(f"instance set {cfg.name!r} has no held-out instances: name some with --instances")
    for n in names:
        cfg.instance(n)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    per_run = out / cfg.name / "per_run"
    records: dict[tuple[str, int], dict] = {}
    todo = []
    keys = {inst: record_key(cfg, inst) for inst in tqdm(names, desc="checking data", unit="instance")}
    for inst in names:
        key = keys[inst]
        for seed in range(args.seeds):
            path = per_run / f"{inst}-seed{seed}.json"
            saved = json.loads(path.read_text()) if path.is_file() else None
            if saved and saved.get("key") == key:
                records[(inst, seed)] = saved["record"]
            else:
                todo.append((inst, seed))
    import time

    t0 = time.time()
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(args.workers, len(todo)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(cfg.model_dump(mode="json"),)) as pool:
            futures = {pool.submit(_job, inst, seed): (inst, seed) for inst, seed in todo}
            try:
                for fut in tqdm(as_completed(futures), total=len(futures), desc="headroom", unit="instance x seed"):
                    inst, seed = futures[fut]
                    rec = fut.result()
                    write_json_atomic(per_run / f"{inst}-seed{seed}.json", {"key": keys[inst], "record": rec},
                                      indent=None)
                    records[(inst, seed)] = rec
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # what finished is saved; rerun to resume
                raise
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
