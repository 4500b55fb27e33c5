"""The learned controller against every other method at matched compute (agents.compare).

For every held-out instance and seed, every method of ``agents.methods.compared(setup)`` runs; compute is
counted in training steps actually run (pruned trials and PBT members included). Searches select
by validation loss; what is reported is the test loss of the selected run. Each method's records
on a pair are saved as they finish (``per_run/<instance>-seed<seed>.json``), keyed by the
instance (its data, spec, session, episode, bounds) and the method's settings (the agent's weights
for the policy), so a crash loses only the work in flight and an agent trained further is run
afresh while the searches are read back. The transferred recipe is tuned first (its trials spread
over the workers); PBT runs last, pair by pair, because Ray Tune spreads each population over
every core itself.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from agents.experiments.runner import RecordStore, Task, WorkerPool, pair_file, run_tasks
from agents.experiments.transferred_recipe import transferred_recipe
from agents.methods import ComparisonSetup, Method, MethodContext, RunRecord, compared
from agents.methods.base import instance_key
from agents.reporting.records import PairResult
from trainers.config import InstanceSetConfig, RecipeConfig
from trainers.progress import progress


@dataclass
class ComparisonOptions:
    """What agents.compare was asked for, checked."""

    agent: str  # the agent folder, absolute
    cfg: InstanceSetConfig  # the agent's instance set, retargeted at --data / --model if given
    instances: list[str]
    out: Path
    seeds: int = 3
    budgets: tuple[int, ...] = (1, 4, 8, 16)
    pbt_populations: tuple[int, ...] = (4,)
    transfer_trials: int = 16
    pool: Optional[dict] = None  # WorkerPool's options (workers, backend, ray_address)
    command: str = ""
    tracking_uri: Optional[str] = None


def method_context(cfg_dict: dict, studies: str) -> MethodContext:
    """Built once in each worker (picklable through functools.partial)."""
    from trainers.config import parse_config

    return MethodContext(parse_config(cfg_dict), Path(studies))


def method_record(ctx: MethodContext, method: Method, instance: str, seed: int, budgets: tuple[int, ...]) -> dict:
    """A task: one method on one pair, its records as JSON by budget."""
    return {str(b): r.to_json() for b, r in method.run(ctx, instance, seed, budgets).items()}


def method_tasks(methods: Sequence[Method], cfg: InstanceSetConfig, names: list[str], seeds: int) -> list[Task]:
    keys = {m.name: m.key() for m in methods}
    ikeys = {n: instance_key(cfg, n) for n in progress(names, desc="checking data", unit="instance")}
    return [Task(pair_file(inst, s), entry, {"instance": ikeys[inst], "method": keys[m.name]}, method_record,
                 (m, inst, s, budgets))
            for inst in names for s in range(seeds) for m in methods for entry, budgets in m.tasks()]


def record_is_stale(task: Task, saved: dict) -> bool:
    """A saved entry under the right key must still run again when it lacks a budget now asked for
    (a comparison rerun with a larger --budgets) or when its method says so (PBT's errored members)."""
    method, _, _, budgets = task.args
    if any(str(b) not in saved for b in budgets):
        return True
    return method.stale({int(b): RunRecord.from_json(r) for b, r in saved.items()})


def gather(methods: Sequence[Method], names: list[str], seeds: int, records: dict) -> list[PairResult]:
    """Per pair: method -> budget -> RunRecord, methods in the registry's order."""
    pairs = []
    for inst in names:
        for s in range(seeds):
            p = PairResult(inst, s)
            for m in methods:
                for entry, budgets in m.tasks():
                    rec = records[pair_file(inst, s), entry]
                    p.results.setdefault(m.name, {}).update({b: RunRecord.from_json(rec[str(b)]) for b in budgets})
            pairs.append(p)
    return pairs


def compare(opts: ComparisonOptions) -> dict[str, Any]:
    """Every method on every pair (read back where saved), then the summary, plots and MLflow run."""
    from agents.reporting import mlflow_tracking
    from agents.reporting.comparison_report import write_outputs
    from agents.reporting.comparison_summary import summarise_comparison
    from trainers.provenance import machine_info, utc_now

    started = time.monotonic()
    cfg, out = opts.cfg, opts.out
    store = RecordStore(out)  # transferred_recipe.json; the pairs' records in per_run/
    pairs_store = RecordStore(out / "per_run")
    make_context = functools.partial(method_context, cfg.model_dump(mode="json"), str((out / "studies").resolve()))
    with WorkerPool(make_context, **(opts.pool or {})) as pool:
        pool.check()  # a bad --workers or a failed Ray start stops here, before any run
        if cfg.control.residual and cfg.control.recipe is not None:  # the rival is the very recipe it corrects
            transferred = {"recipe": cfg.control.recipe.model_dump(mode="json"),
                           "source": "control.recipe: the recipe the residual controller corrects, tuned once on "
                                     "the training instances (not tuned again here)"}
        else:
            transferred = transferred_recipe(cfg, opts.transfer_trials, store, pool) if opts.transfer_trials else None
        setup = ComparisonSetup(cfg, opts.agent, tuple(sorted(opts.budgets)), tuple(sorted(set(opts.pbt_populations))),
                                RecipeConfig(**transferred["recipe"]) if transferred else None)
        asked = compared(setup)
        left_out = {m.name: reason for m in asked if (reason := m.ruled_out(cfg)) is not None}
        methods = [m for m in asked if m.name not in left_out]
        tasks = method_tasks(methods, cfg, opts.instances, opts.seeds)
        by_entry = {e: m for m in methods for e, _ in m.tasks()}
        in_worker = {e for e, m in by_entry.items() if m.runs_in_worker}
        records = run_tasks([t for t in tasks if t.name in in_worker], pairs_store, pool, record_is_stale, desc="compare")
    # after the pool is gone: PBT's Ray Tune takes every core, pair by pair, in this process
    with WorkerPool(make_context) as own:
        records.update(run_tasks([t for t in tasks if t.name not in in_worker], pairs_store, own, record_is_stale, desc="PBT"))
    pairs = gather(methods, opts.instances, opts.seeds, records)
    summary = summarise_comparison(pairs, list(opts.budgets))
    summary.update({"command": opts.command, "seeds": list(range(opts.seeds)), "instances": opts.instances,
                    "agent_fingerprint": by_entry["policy"].key()["agent"], "measured_at": utc_now(),
                    "machine": machine_info(),
                    # this invocation only: a resumed comparison's earlier invocations are not counted
                    "wall_seconds_this_invocation": round(time.monotonic() - started, 1),
                    # the pairs' tasks over every invocation, PBT's included (not the recipe's tuning, if any)
                    "worker_seconds": pairs_store.worker_seconds(pair_file(n, s) for n in opts.instances
                                                                 for s in range(opts.seeds)),
                    "left_out": left_out, "transferred_recipe_tuning": transferred})
    plots = write_outputs(out, summary, pairs, opts.command, list(opts.budgets))
    with mlflow_tracking.tracked_run(opts.tracking_uri, "compare", f"compare/{out.name}"):
        log_to_mlflow(summary, opts, plots + [out / "summary.md", out / "summary.json", out / "summary.csv"])
    return summary


def log_to_mlflow(summary: dict, opts: ComparisonOptions, files: list[Path]) -> None:
    import mlflow

    mlflow.log_params({"agent": opts.agent, "budgets": list(opts.budgets), "seeds": opts.seeds,
                       "instances": ",".join(opts.instances)})
    for m, by_b in summary["methods"].items():
        with mlflow.start_run(run_name=m, nested=True):
            for b, s in by_b.items():
                mlflow.log_metric("test_loss_mean", s["test_loss_mean"], step=int(b))
                mlflow.log_metric("compute_steps", s["compute_steps"], step=int(b))
                gain = summary["search_gain_captured"][m][b]["iqm"]
                if gain == gain:  # nan where no instance had a gain to capture
                    mlflow.log_metric("search_gain_captured_iqm", gain, step=int(b))
    for f in files:
        mlflow.log_artifact(str(f))
