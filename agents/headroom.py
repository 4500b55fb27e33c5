"""Headroom: how much a perfect controller could gain on each held-out instance, before any learner
is judged on it.

    python -m agents.headroom --config smollm2_cpu [--seeds 3] [--workers 2] [--json]
    python -m agents.headroom --config smollm2_cpu --lr-grid --seeds 2 --workers 2

For every held-out instance and seed (each seed draws its own start lr), runs the start held
(hold), constant multiples of it (x1/16 .. x16), warmup-then-cosine shapes at a few peaks, and the
default recipe, all through the shared episode loop (agents/experiments/open_loop.py). Writes
results/headroom/<config>.json (per instance: hold_test_loss, best_open_loop_test_loss,
default_recipe_test_loss, base_test_metric, best_test_metric, best_constant_lr, each averaged over
the starts tried), a markdown table, and a plot of test loss against the lr multiplier.

With --transfer (a family with training instances, e.g. smollm2_wide): on every held-out instance
the best constant lr on the grid, the best open-loop schedule, the default recipe, the recipe
tuned once on the training instances (as agents.compare tunes it, --transfer-trials) and Optuna's
best of --search-budget runs (agents/experiments/transfer_headroom.py). results/headroom/<config>.json
gets a `summary` (spread of the held-out best lrs; the transferred recipe's share of the search's
gain, 0 = default recipe, 1 = the search) and <config>.png test loss against lr per instance.

    python -m agents.headroom --config smollm2_wide --transfer --seeds 1 --workers 2

With --lr-grid: each lr of an absolute grid (1e-5 .. 1e-2, half-decade steps) held on every
instance; each instance's best constant lr (agents/experiments/lr_grid.py), written to
<config>_lr_grid.*: what agents.train_agent --imitate warm-starts from.

With --residual-probe (a residual set with the paired reward): on training instances only, fixed lr
corrections of the recipe and their paired returns (agents/experiments/residual_probe.py), written
to <config>_residual_probe.*; e.g. --config smollm2_wide_anchored --residual-probe --seeds 2.

Each instance x seed is saved when it finishes; rerunning the command resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from agents.experiments.runner import add_worker_arguments, pool_options, provenance
from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, ConfigError, load_config


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.headroom", description=__doc__)
    p.add_argument("--config", default="smollm2_cpu", help="instance set (default: smollm2_cpu)")
    p.add_argument("--instances", nargs="*", default=None,
                   help="instance names (default: the held-out set; with --lr-grid, every instance)")
    p.add_argument("--lr-grid", action="store_true", help="instead: the best constant lr of every instance on a grid")
    p.add_argument("--transfer", action="store_true",
                   help="instead: headroom over the recipe tuned once on the training instances (see above)")
    p.add_argument("--residual-probe", action="store_true",
                   help="instead: paired returns of fixed lr corrections of the recipe on training instances (see above)")
    p.add_argument("--every", type=positive_int, default=6,
                   help="with --residual-probe and no --instances: every N-th training instance (default 6; 1: all)")
    p.add_argument("--reference-runs-from", default=None,
                   help="with --residual-probe: a folder of the recipe's runs to reuse (an agent's reference_runs)")
    p.add_argument("--transfer-trials", type=positive_int, default=16,
                   help="with --transfer: Optuna trials tuning that recipe on the training instances (default 16)")
    p.add_argument("--search-budget", type=positive_int, default=16,
                   help="with --transfer: the per-instance Optuna search's runs, the gain scale's 1.0 (default 16)")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds (= drawn starts) per instance (default: 3; with --residual-probe, the batch seeds "
                        "training draws, control.reference_seeds)")
    add_worker_arguments(p, default_workers=2)
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "headroom"), help="folder (default: results/headroom)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def headroom(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict[str, Any]:
    from agents.experiments import lr_grid, open_loop, transfer_headroom
    from agents.reporting.headroom_report import write_headroom_outputs, write_lr_grid_outputs, write_transfer_outputs
    from trainers.atomic_files import write_json_atomic

    cfg = load_config(args.config)
    if sum([args.transfer, args.lr_grid, args.residual_probe]) > 1:
        raise ConfigError("--transfer, --lr-grid and --residual-probe: choose one")
    if args.reference_runs_from and not args.residual_probe:
        raise ConfigError("--reference-runs-from: only with --residual-probe")
    if args.residual_probe:
        from agents.experiments.residual_probe import probe_and_write

        command = "python -m agents.headroom " + " ".join(argv if argv is not None else sys.argv[1:])
        return probe_and_write(cfg, args.instances, args.every, args.seeds, Path(args.out), pool_options(args),
                               args.reference_runs_from, command, args.json)
    args.seeds = args.seeds or 3
    if args.transfer and not cfg.train:
        raise ConfigError(f"--transfer: instance set {cfg.name!r} has no training instances to tune a recipe on")
    if args.transfer and args.instances:
        trained = [n for n in args.instances if n in {i.name for i in cfg.train}]
        if trained:
            raise ConfigError(f"--instances {trained[0]}: a training instance; --transfer measures held-out ones only "
                              "(the recipe was tuned on the training instances)")
    names = args.instances or [i.name for i in (cfg.train + cfg.heldout if args.lr_grid else cfg.heldout)]
    if not names:
        raise ConfigError(f"instance set {cfg.name!r} has no held-out instances: name some with --instances")
    for n in names:
        cfg.instance(n)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    t0 = time.time()
    name = f"{cfg.name}_lr_grid" if args.lr_grid else cfg.name
    _check_not_the_other_mode(out / f"{name}.json", args.transfer)
    if args.transfer:
        found = transfer_headroom.transfer_headroom(cfg, names, args.seeds, out / name, pool_options(args),
                                                    args.transfer_trials, args.search_budget)
    else:
        run = lr_grid.lr_grid if args.lr_grid else open_loop.headroom
        found = run(cfg, names, args.seeds, out / name, pool_options(args))
    command = "python -m agents.headroom " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"config": cfg.name, **provenance(command, t0, out / name / "per_run", names, args.seeds),
              "seeds": list(range(args.seeds)), **found}
    write_json_atomic(out / f"{name}.json", result)
    writer = write_transfer_outputs if args.transfer else write_lr_grid_outputs if args.lr_grid else write_headroom_outputs
    writer(out, cfg.name, result)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "machine")}))
    else:
        print((out / f"{name}.md").read_text())
    return result


def _check_not_the_other_mode(path: Path, transfer: bool) -> None:
    """--transfer and the start-relative headroom share a file name: neither overwrites the other's."""
    if not path.is_file():
        return
    try:
        held = "transferred_recipe" in json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable: it is rewritten
    if held != transfer:
        raise ConfigError(f"{path}: holds {'--transfer' if held else 'start-relative'} headroom results; "
                          "give --out another folder to keep them")


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), lambda args: headroom(args, argv), argv)


if __name__ == "__main__":
    main()
