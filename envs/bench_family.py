"""Benchmark: what an instance family costs: building its caches, and one episode per instance.

    DSRL_CACHE=<empty folder> python -m envs.bench_family [--config smollm2_wide] [--workers 2]

Phase 1 builds every dataset's splits and frozen-prefix states (every depth the family uses, one
pass per split), one dataset per task, on ``--workers`` processes: its wall time, and the disk the
states take (the frozen_prefix folder of the cache; point DSRL_CACHE at an empty folder to time a
build from nothing; the model's own conversion is done before the clock starts).
Phase 2 runs the default recipe once on every instance (seed 0) and times each episode (training
plus its evaluations, on one core each; training and evaluation apart): the median and the spread,
and the median of a learner's episode (training and validation, no test split) on the training
instances.
--episodes-only reruns phase 2 alone (after a change of draws over the same datasets). Figures go to stdout and to
results/bench_family_<config>.json, with the machine, the command and the commit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from trainers.atomic_files import write_json_atomic
from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, ConfigError, cache_root, load_config
from trainers.provenance import machine_info, utc_now


def _build_pool(config: str, names: list[str]) -> float:
    """Every instance of one dataset reset once: its data and states are built (and cached)."""
    from envs.finetune_env import FineTuneEnv

    t0 = time.perf_counter()
    env = FineTuneEnv(config, split="all")
    for name in names:
        env.reset(seed=0, options={"instance": name})
    return time.perf_counter() - t0


def _episodes(config: str, names: list[str]) -> dict[str, float]:
    from envs.episode import recipe_plan, run_episode
    from envs.finetune_env import FineTuneEnv

    env = FineTuneEnv(config, split="all", evaluate_test=True)
    parts = {"train_seconds": 0.0, "eval_seconds": 0.0}
    step = env.step_with_schedule

    def timed_step(per_step):  # the environment's own per-interval timing, summed
        result = step(per_step)
        for k in parts:
            parts[k] += env.timing[k]
        return result

    env.step_with_schedule = timed_step
    out = {}
    for name in names:
        env.reset(seed=0, options={"instance": name})  # data and engine ready before the clock starts
        parts.update(train_seconds=0.0, eval_seconds=0.0)
        t0 = time.perf_counter()
        run_episode(env, recipe_plan(env, env.cfg.default_recipe, name), name, seed=0)
        out[name] = {"seconds": time.perf_counter() - t0, **parts}
    return out


def _disk_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20 if folder.is_dir() else 0.0


def parser() -> CommandParser:
    p = CommandParser(prog="python -m envs.bench_family", description=__doc__)
    p.add_argument("--config", default="smollm2_wide", help="instance set (default smollm2_wide)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes, one core each (default 2)")
    p.add_argument("--episodes-only", action="store_true",
                   help="skip phase 1 (the caches are built) and keep its figures from the last results file")
    return p


def measure(args: argparse.Namespace) -> int:
    from trainers.models import ensure_smollm2

    cfg = load_config(args.config)
    if cfg.session.model == "smollm2-135m":
        ensure_smollm2()  # the model's conversion is not the family's cost
    instances = cfg.train + cfg.heldout
    by_pool: dict[str, list[str]] = {}
    for inst in instances:
        by_pool.setdefault(inst.dataset.model_dump_json(), []).append(inst.name)
    out = REPO_ROOT / "results" / f"bench_family_{args.config}.json"
    if args.episodes_only:
        if not out.is_file():
            raise ConfigError(f"--episodes-only: {out} has no phase 1 figures yet: run without it first")
        record = {k: v for k, v in json.loads(out.read_text()).items() if not k.startswith("episode")}
        record["episodes_command"] = f"python -m envs.bench_family {' '.join(sys.argv[1:])}"
        record["episodes_when"] = utc_now()
    else:
        prefix = cache_root() / "frozen_prefix"
        disk_before = _disk_mib(prefix)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(_build_pool, [args.config] * len(by_pool), list(by_pool.values())))
        build_s = time.perf_counter() - t0
        print(f"caches: {len(by_pool)} datasets in {build_s:.0f} s; states on disk {_disk_mib(prefix):.0f} MiB",
              flush=True)
        record = {
            "command": f"DSRL_CACHE=<empty folder> python -m envs.bench_family {' '.join(sys.argv[1:])}".strip(),
            "machine": machine_info(), "when": utc_now(), "config": args.config, "workers": args.workers,
            "n_datasets": len(by_pool), "n_instances": len(instances), "cache_build_s": round(build_s, 1),
            "cache_disk_mib": round(_disk_mib(prefix), 1), "cache_disk_mib_before": round(disk_before, 1),
        }
        write_json_atomic(out, record)  # phase 1 is kept if phase 2 is stopped
    names = [i.name for i in instances]
    chunks = [names[w::args.workers] for w in range(args.workers)]
    t1 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        seconds = {k: v for part in pool.map(_episodes, [args.config] * len(chunks), chunks) for k, v in part.items()}
    episodes_s = time.perf_counter() - t1
    values = sorted(v["seconds"] for v in seconds.values())
    # what a learner's episode costs: training and its validation passes (the test split is only
    # evaluated by comparisons); the training instances apart, the ones a learner meets
    learner = {k: v["train_seconds"] + v["eval_seconds"] for k, v in seconds.items()}
    train = {i.name for i in cfg.train}
    record.update({
        "learner_episode_s_median": round(statistics.median(learner.values()), 2),
        "learner_episode_s_median_train": round(statistics.median(v for k, v in learner.items() if k in train), 2),
        "learner_episode_s_p90_train": round(sorted(v for k, v in learner.items() if k in train)[int(0.9 * len(train))], 2),
        "episode_s_median": round(statistics.median(values), 2), "episode_s_min": round(values[0], 2),
        "episode_s_max": round(values[-1], 2), "episodes_wall_s": round(episodes_s, 1),
        "episode_s": {k: {f: round(x, 2) for f, x in v.items()} for k, v in seconds.items()},
    })
    write_json_atomic(out, record)
    print(f"episodes: median {record['episode_s_median']} s with the test split (min {record['episode_s_min']}, max "
          f"{record['episode_s_max']}) over {len(names)} instances; a learner's (training + validation): median "
          f"{record['learner_episode_s_median_train']} s on the training instances; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(parser(), measure))
