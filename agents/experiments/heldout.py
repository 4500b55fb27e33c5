"""Held-out evaluation (agents.evaluate, and the end of agents.train_agent): every held-out instance
x seed runs three methods on the same seeds (same batches and dropout):

  policy          the learned controller (deterministic actions)
  default_recipe  the instance set's declared static recipe
  held_start      no control: the policy's own drawn start, held for the whole episode

The last separates what the policy's steering buys from what its starting point gives. For a
residual controller the start is its recipe (``control.recipe``), so ``held_start`` is that recipe
run as is; three more methods measure the rescue of a user's wrong start: ``policy_guess``,
``held_guess`` and ``range_test`` (agents/reporting/rescue_report.py).
Validation drives nothing here; each run's test split is what is reported. Runs are saved in the
agent folder's ``heldout_runs/`` as they finish, so an interrupted evaluation resumes.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

from agents.experiments.matched_compute import gather, method_context, method_tasks, record_is_stale
from agents.experiments.runner import RecordStore, WorkerPool, run_tasks
from agents.methods import HELDOUT, HELDOUT_RESCUE, ComparisonSetup, MethodContext, build
from trainers.config import ConfigError, InstanceSetConfig

STORE = "heldout_runs"
SAME_STACK = ("python", "torch", "cpu_count", "cuda")  # what must match for another evaluation's runs to stand in


def evaluate_heldout(agent: Path, seeds: int, pool: Optional[dict] = None, reused: Optional[dict] = None,
                     sessions: Optional[dict] = None) -> dict[str, list[dict]]:
    """Method -> episode logs, in (instance, seed) order. ``reused``: method -> logs taken from
    another evaluation (``reusable_baselines``), not run again. ``sessions``: engines of this
    process to reuse (one worker only)."""
    from agents.learners.agent_folder import Controller

    cfg = Controller(agent).env_config
    if not cfg.heldout:
        raise ConfigError(f"{agent / 'env_config.yaml'}: the agent's instance set has no held-out instances")
    reused = reused or {}
    asked = HELDOUT_RESCUE if cfg.control.residual else HELDOUT  # a residual controller: its rescue too
    methods = build(tuple(m for m in asked if m not in reused), ComparisonSetup(cfg, str(Path(agent).resolve())))
    names = [i.name for i in cfg.heldout]
    opts = pool or {}
    if sessions is not None and opts.get("workers", 1) == 1 and opts.get("backend", "process") == "process":
        make_context: Any = lambda: MethodContext(cfg, sessions=sessions)  # noqa: E731 (this process only)
    else:
        make_context = functools.partial(method_context, cfg.model_dump(mode="json"), str(Path(agent) / STORE))
    with WorkerPool(make_context, **opts) as workers:
        records = run_tasks(method_tasks(methods, cfg, names, seeds), RecordStore(Path(agent) / STORE), workers,
                            record_is_stale, desc="held-out evaluation")
    pairs = gather(methods, names, seeds, records)
    runs = {m.name: [p.one_run(m.name).log for p in pairs] for m in methods}
    return {m: reused[m] if m in reused else runs[m] for m in asked}


def evaluate_and_report(agent: Path, seeds: int, command: str, pool: Optional[dict] = None,
                        reused: Optional[dict] = None, extra: Optional[dict] = None, log_to_mlflow: bool = True,
                        sessions: Optional[dict] = None) -> dict:
    """The evaluation, then heldout.json / heldout.md and the plots in the agent folder (and, with
    ``log_to_mlflow``, every episode as a nested run of the active MLflow run); prints the table."""
    from agents.reporting.heldout_report import write_heldout_report

    from agents.learners.agent_folder import Controller

    runs = evaluate_heldout(agent, seeds, pool, reused, sessions)
    extrapolation = frozenset(i.name for i in Controller(agent).env_config.heldout if "extrapolation" in i.tags)
    summary = write_heldout_report(agent, runs, command, log_to_mlflow=log_to_mlflow, extra=extra,
                                   extrapolation=extrapolation)
    print("\n" + (agent / "heldout.md").read_text())
    print(f"written: {agent / 'heldout.json'}, {agent / 'heldout.md'}")
    return summary


def same_runs_without_a_policy(a: InstanceSetConfig, b: InstanceSetConfig) -> bool:
    """Whether two instance sets make the same runs where no policy acts: equal but for what such
    runs do not use (the name, the action space, and what a controller observes)."""
    unused = {"name": True, "action": True, "control": {"features"}}
    return a.model_dump(exclude=unused) == b.model_dump(exclude=unused)


def reusable_baselines(other_folder: Path, cfg: InstanceSetConfig, seeds: int) -> tuple[dict[str, list[dict]], dict]:
    """The runs of another agent's held-out evaluation that no policy acts in (default recipe, held
    start; for a residual controller the guess held and the range test too), when they are the runs
    this evaluation would make: the same instance set (its name, action space and observation aside,
    which these runs do not use), measured on the same stack, and every (instance, seed) present. Each run's
    seed fixes its start, batches and dropout, so rerunning them would give the same logs; a
    mismatch stops with the reason instead."""
    from agents.learners.agent_folder import Controller
    from trainers.config import read_structured_file
    from trainers.provenance import machine_info

    if not same_runs_without_a_policy(Controller(other_folder).env_config, cfg):
        raise ConfigError(f"--baselines-from {other_folder}: that agent's instance set differs from this one's "
                          "(env_config.yaml), so its baseline runs are not this evaluation's")
    data = read_structured_file(Path(other_folder) / "heldout.json")
    runs = data.get("runs") if isinstance(data, dict) else None
    theirs = ((data.get("summary") or {}).get("machine") or {}) if isinstance(data, dict) else {}
    ours = machine_info()
    differ = [k for k in SAME_STACK if theirs.get(k) != ours.get(k)]
    if differ:
        raise ConfigError(f"--baselines-from {other_folder}: heldout.json was measured on another stack or machine "
                          f"({differ[0]}: {theirs.get(differ[0])!r} there, {ours.get(differ[0])!r} here); "
                          "CPU kernels differ, so its runs are not this evaluation's")
    out: dict[str, list[dict]] = {}
    need = [(inst.name, s) for inst in cfg.heldout for s in range(seeds)]
    # a residual controller's rescue rivals never act either: the guess held, and the range test
    for m in ("default_recipe", "held_start") + (("held_guess", "range_test") if cfg.control.residual else ()):
        have = {(r.get("instance"), r.get("seed")): r for r in (runs or {}).get(m, []) if isinstance(r, dict)}
        missing = [j for j in need if j not in have]
        if missing:
            raise ConfigError(f"--baselines-from {other_folder}: heldout.json has no {m} run for instance "
                              f"{missing[0][0]!r} seed {missing[0][1]}")
        out[m] = [have[j] for j in need]
    source = {"folder": str(other_folder), "methods": sorted(out), "git_commit": theirs.get("git_commit"),
              "measured_at": (data.get("summary") or {}).get("measured_at")}
    return out, source
