"""Headroom over a recipe tuned once (agents.headroom --transfer): on every held-out instance x seed,
what static choices reach, against the recipe a user could carry over from the training instances.

  lr grid             each lr of LR_GRID held for the whole episode (lr_grid.constant_lr_sweep)
  best open-loop      the best by validation of the lr grid and warmup-cosine schedules peaking at
                      1/4, 1 and 4 x the instance's own best grid lr (those run once the grid is in)
  default recipe      the instance set's declared recipe (agents.methods: default_recipe)
  transferred recipe  one recipe tuned by Optuna on the training instances with the procedure
                      agents.compare uses (agents/experiments/transferred_recipe.py), applied once
  Optuna best of B    TPE + median pruning, best of B trials on the instance itself (optuna_tpe)

The gain captured is on compare's search-gain scale (agents/reporting/comparison_summary.py:
0 = the default recipe, 1 = Optuna's best of B). Every unit is saved in ``<folder>/per_run`` as it
finishes and the tuning's study in SQLite, so rerunning the command resumes where it stopped.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from agents.experiments.lr_grid import LR_GRID, best_lr_on_grid, constant_lr_sweep
from agents.experiments.matched_compute import gather, method_context, method_record, method_tasks, record_is_stale
from agents.experiments.open_loop import schedule_summary
from agents.experiments.runner import RecordStore, Task, WorkerPool, pair_file, run_tasks
from agents.experiments.transferred_recipe import transferred_recipe
from agents.methods import ComparisonSetup, MethodContext, build
from agents.methods.base import instance_key
from envs.episode import SchedulePlan, run_episode
from trainers.config import InstanceSetConfig, RecipeConfig
from trainers.schedules import recipe_schedule

FORMAT = 1  # bump when what a record holds, or how it is computed, changes
WARMUP_COSINE_PEAKS = (1 / 4, 1.0, 4.0)  # x the instance's best grid lr
SEPARATION = 0.02  # a held-out instance must let methods be told apart: search gain >= 2% of the default's loss
METHODS = ("default_recipe", "transferred_recipe", "optuna_tpe")


def warmup_cosine(ctx: MethodContext, instance: str, seed: int, peaks: list[float]) -> dict[str, Any]:
    """10% linear warmup to each peak lr, then cosine decay, with the default recipe's weight decay
    and clipping; the same seed (batches, evaluation points) as the grid's runs."""
    env = ctx.env()
    rec, lo = env.cfg.default_recipe, env.cfg.bounds.lr[0]
    total = env.cfg.steps_for(env.cfg.instance(instance))
    runs = {}
    for peak in peaks:
        recipe = RecipeConfig(lr=peak, weight_decay=rec.weight_decay, grad_clip=rec.grad_clip, warmup_fraction=0.1,
                              decay="cosine")
        log = run_episode(env, SchedulePlan(recipe_schedule(recipe, total, min_lr=lo)), instance, seed)
        runs[f"warmup-cosine {peak:.3g}"] = dict(schedule_summary(log), lr=peak)
    return {"instance": instance, "seed": seed, "runs": runs}


def _stale(task: Task, saved) -> bool:
    """Method records follow compare's rule (a budget now asked for is missing); grid and schedule
    records stand while their key matches."""
    return task.fn is method_record and record_is_stale(task, saved)


def unseen_family(cfg: InstanceSetConfig, name: str) -> bool:
    """A held-out instance's family is its data source x task kind, which is its dataset's kind
    (trainers/instance_family.py): unseen when no training instance has that kind."""
    return cfg.instance(name).dataset.kind not in {i.dataset.kind for i in cfg.train}


def transfer_headroom(cfg: InstanceSetConfig, names: list[str], seeds: int, folder: Path, pool_opts: dict,
                      transfer_trials: int = 16, search_budget: int = 16) -> dict[str, Any]:
    """Every measurement above on every (instance, seed), read back where saved; the summary."""
    rec = cfg.default_recipe
    extra = {"format": FORMAT, "lr_grid": list(LR_GRID), "weight_decay": rec.weight_decay,
             "grad_clip": rec.grad_clip}
    keys = {n: instance_key(cfg, n) for n in names}
    store = RecordStore(folder / "per_run")
    make_context = functools.partial(method_context, cfg.model_dump(mode="json"), str((folder / "studies").resolve()))
    with WorkerPool(make_context, **pool_opts) as pool:
        pool.check()
        grid_tasks = [Task(pair_file(n, s), "lr_grid", {"instance": keys[n], **extra}, constant_lr_sweep, (n, s))
                      for n in names for s in range(seeds)]
        searched = build(("default_recipe", "optuna_tpe"), ComparisonSetup(cfg, "", (search_budget,)))
        grids = run_tasks(grid_tasks + method_tasks(searched, cfg, names, seeds), store, pool, _stale,
                          desc="lr grid, default recipe, Optuna")
        best = {n: best_lr_on_grid([grids[pair_file(n, s), "lr_grid"] for s in range(seeds)])["best_lr_grid"]
                for n in names}
        schedule_tasks = [Task(pair_file(n, s), "warmup_cosine", {"instance": keys[n], **extra, "peaks":
                               [best[n] * m for m in WARMUP_COSINE_PEAKS]}, warmup_cosine,
                               (n, s, [best[n] * m for m in WARMUP_COSINE_PEAKS])) for n in names for s in range(seeds)]
        tuned = transferred_recipe(cfg, transfer_trials, RecordStore(folder), pool)
        transferred = build(("transferred_recipe",), ComparisonSetup(cfg, "", (search_budget,),
                                                                     transferred=RecipeConfig(**tuned["recipe"])))
        rest = run_tasks(schedule_tasks + method_tasks(transferred, cfg, names, seeds), store, pool, _stale,
                         desc="schedules, transferred recipe")
    records = {**grids, **rest}
    pairs = gather(searched + transferred, names, seeds, records)
    return summarise(cfg, names, seeds, records, pairs, tuned, search_budget)


def summarise(cfg: InstanceSetConfig, names: list[str], seeds: int, records: dict, pairs: list, tuned: dict,
              search_budget: int) -> dict[str, Any]:
    from agents.reporting.comparison_summary import search_gain_captured
    from agents.reporting.statistics import instance_bootstrap_iqm

    per_instance: dict[str, dict[str, Any]] = {}
    for n in names:
        grid = best_lr_on_grid([records[pair_file(n, s), "lr_grid"] for s in range(seeds)])
        ps = [p for p in pairs if p.instance == n]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        open_loop = []
        for s in range(seeds):
            runs = {**records[pair_file(n, s), "lr_grid"]["runs"], **records[pair_file(n, s), "warmup_cosine"]["runs"]}
            key, run = min(runs.items(), key=lambda kv: kv[1]["val_loss"] if math.isfinite(kv[1]["val_loss"]) else math.inf)
            open_loop.append((key, run["test_loss"]))
        default = mean([p.one_run("default_recipe").test_loss for p in ps])
        search = mean([p.results["optuna_tpe"][search_budget].test_loss for p in ps])
        per_instance[n] = {
            "unseen_family": unseen_family(cfg, n), "tags": list(cfg.instance(n).tags),
            "best_constant_lr": grid["best_lr_refined"], "best_constant_lr_grid": grid["best_lr_grid"],
            "best_constant_lr_at_grid_edge": grid["at_grid_edge"],
            "lr_grid": grid["lrs"], "lr_grid_test_loss": grid["mean_test_loss"], "lr_grid_val_loss": grid["mean_val_loss"],
            "best_open_loop": [k for k, _ in open_loop], "best_open_loop_test_loss": mean([t for _, t in open_loop]),
            "default_recipe_test_loss": default,
            "transferred_recipe_test_loss": mean([p.one_run("transferred_recipe").test_loss for p in ps]),
            f"optuna_best_of_{search_budget}_test_loss": search,
            "search_gain_over_default": (default - search) / default,
        }
    gain = search_gain_captured(pairs)
    captured = gain["by_method"]["transferred_recipe"]["1"]["per_instance"]
    point, lo, hi = instance_bootstrap_iqm(captured)
    heldout = [n for n in names if n in {i.name for i in cfg.heldout}]
    lrs = [per_instance[n]["best_constant_lr"] for n in heldout]
    summary = {
        "n_train_instances": len(cfg.train),
        "n_heldout_instances": len(heldout),
        "n_heldout_unseen_family": sum(per_instance[n]["unseen_family"] for n in heldout),
        "best_constant_lr_spread_heldout": max(lrs) / min(lrs) if lrs else None,
        "transferred_recipe_gain_captured": {"iqm": point, "ci95_low": lo, "ci95_high": hi},
        "gain_captured_interval": ("IQM over the held-out instances of each one's captured gain (its ratio of "
                                   "seed-averaged gains, as agents.compare computes it per instance; compare pools "
                                   "instances x seeds, here each instance counts once); 95% percentile interval from "
                                   "5,000 bootstrap resamples of the instances, holding each instance's runs, its "
                                   "search's noise and its denominator fixed. Instances where the search did not beat "
                                   "the default recipe have no ratio and are listed apart"),
        "search_reference": f"optuna_tpe best of {search_budget}",
        "instances_below_separation": sorted(n for n in heldout if per_instance[n]["search_gain_over_default"] < SEPARATION),
        "separation_threshold": SEPARATION,
    }
    return {"summary": summary, "transferred_recipe": tuned, "instances": per_instance,
            "transferred_recipe_gain_captured_per_instance": captured,
            "instances_without_search_gain": gain["instances_without_gain"]}
