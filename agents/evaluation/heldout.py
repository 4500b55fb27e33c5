"""Held-out evaluation: every held-out instance x seed runs three times on the same seeds (same
batches and dropout), through the shared episode loop:

  policy             the learned controller (deterministic actions)
  default_recipe     the instance set's declared static recipe
  initial_constant   no control: the policy's own drawn start, held for the whole episode

The last separates what the policy's steering buys from what its starting point gives. Validation
drives nothing here; each run's test split is what is reported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from agents.learners.agent_folder import Controller
from agents.reporting.heldout_report import METHODS
from envs.episode import HoldPlan, PolicyPlan, recipe_plan, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.config import ConfigError, InstanceSetConfig


_WORKER: dict[str, tuple[Controller, FineTuneEnv]] = {}  # per worker process: built once, reused by its jobs


def _evaluate_jobs(folder: str, jobs: list[tuple[str, int]], methods: tuple[str, ...]) -> dict[str, list[dict]]:
    """One worker process: its own engine and controller, the given (instance, seed) jobs."""
    if folder not in _WORKER:
        controller = Controller(folder)
        _WORKER[folder] = (controller, FineTuneEnv(controller.env_config, split="heldout", evaluate_test=True))
    controller, env = _WORKER[folder]
    return evaluate_heldout(controller, [], env=env, jobs=jobs, show_progress=False, methods=methods)


def evaluate_heldout_parallel(folder: str, seeds: list[int], workers: int,
                              methods: tuple[str, ...] = METHODS) -> dict[str, list[dict]]:
    """evaluate_heldout split over worker processes, by (instance, seed); each run is the same as
    in one process (its seed fixes its start, batches and dropout), so only the order differs,
    and the result is put back in evaluate_heldout's order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    cfg = Controller(folder).env_config
    jobs = [(inst.name, s) for inst in cfg.heldout for s in seeds]
    chunks = [jobs[i::workers] for i in range(workers)]
    done: dict[tuple[str, int], dict[str, dict]] = {}
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_jobs, folder, [j], methods) for chunk in chunks for j in chunk]
        for f in tqdm(as_completed(futures), total=len(futures), desc="held-out evaluation", unit="instance x seed"):
            part = f.result()
            for m, logs in part.items():
                for r in logs:
                    done.setdefault((r["instance"], r["seed"]), {})[m] = r
    return {m: [done[j][m] for j in jobs] for m in methods}


def evaluate_heldout(controller: Controller, seeds: list[int], env: Optional[FineTuneEnv] = None,
                     cfg: Optional[InstanceSetConfig] = None, show_progress: bool = True,
                     jobs: Optional[list[tuple[str, int]]] = None,
                     methods: tuple[str, ...] = METHODS) -> dict[str, list[dict]]:
    """Returns method -> episode logs, for the given methods (the baselines may come from another
    agent's evaluation: see reusable_baselines)."""
    cfg = cfg or controller.env_config
    if not cfg.heldout:
        raise ConfigError(f"instance set {cfg.name!r} has no held-out instances to evaluate on")
    env = env or FineTuneEnv(cfg, split="heldout", evaluate_test=True)
    env.evaluate_test = True
    controller.check_compatible(env.actions)
    jobs = jobs if jobs is not None else [(inst.name, s) for inst in cfg.heldout for s in seeds]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    policy = PolicyPlan(controller.act)
    for name, seed in tqdm(jobs, desc="held-out evaluation", unit="instance x seed", disable=not show_progress):
        if "policy" in methods:
            runs["policy"].append(run_episode(env, policy, name, seed))
        if "default_recipe" in methods:
            runs["default_recipe"].append(run_episode(env, recipe_plan(env, cfg.default_recipe, name), name, seed))
        if "initial_constant" in methods:
            runs["initial_constant"].append(run_episode(env, HoldPlan(), name, seed))
    return runs


SAME_STACK = ("python", "torch", "cpu_count", "cuda")  # what must match for another evaluation's runs to stand in


def reusable_baselines(other_folder: Path, cfg: InstanceSetConfig, seeds: list[int]) -> tuple[dict[str, list[dict]], dict]:
    """The default-recipe and no-control runs of another agent's held-out evaluation, when they are
    the runs this evaluation would make: the same instance set (the action space aside, which
    these runs do not use) and every (instance, seed) present. Each run's seed fixes its start,
    batches and dropout, so rerunning them would give the same logs; a mismatch stops with the
    reason instead."""
    from trainers.config import read_structured_file

    other_cfg = Controller(other_folder).env_config
    if other_cfg.model_dump(exclude={"action"}) != cfg.model_dump(exclude={"action"}):
        raise ConfigError(f"--baselines-from {other_folder}: that agent's instance set differs from this one's "
                          "(env_config.yaml), so its baseline runs are not this evaluation's")
    from trainers.provenance import machine_info

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
    for m in ("default_recipe", "initial_constant"):
        have = {(r.get("instance"), r.get("seed")): r for r in (runs or {}).get(m, []) if isinstance(r, dict)}
        need = [(inst.name, s) for inst in cfg.heldout for s in seeds]
        missing = [j for j in need if j not in have]
        if missing:
            raise ConfigError(f"--baselines-from {other_folder}: heldout.json has no {m} run for instance "
                              f"{missing[0][0]!r} seed {missing[0][1]}")
        out[m] = [have[j] for j in need]
    source = {"folder": str(other_folder), "methods": sorted(out), "git_commit": theirs.get("git_commit"),
              "measured_at": (data.get("summary") or {}).get("measured_at")}
    return out, source
