"""Benchmark: fine-tuning episodes per hour with 1 and with N Ray actors, in one run.

    python -m agents.bench_parallel --json [--n-envs 2] [--episodes-per-env 6]

Random small actions; the same number of episodes per actor at every width, so the ratio is
throughput bought by parallelism. Figures go to stdout and results/ray_parallel.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, load_config


def episodes_per_hour(cfg_dict: dict, n_envs: int, episodes_per_env: int, seed: int = 0) -> dict:
    from agents.parallel.ray_vec_env import RayVecEnv

    venv = RayVecEnv(cfg_dict, n_envs, seed=seed)
    rng = np.random.default_rng(seed)
    venv.reset()  # builds every actor's engine and data: not timed
    done_count = 0
    t0 = time.perf_counter()
    while done_count < n_envs * episodes_per_env:
        actions = rng.uniform(-0.3, 0.3, (n_envs,) + venv.action_space.shape).astype(np.float32)
        _, _, dones, _ = venv.step(actions)
        done_count += int(dones.sum())
    wall = time.perf_counter() - t0
    venv.close()
    return {"n_envs": n_envs, "episodes": done_count, "seconds": wall, "episodes_per_hour": done_count / wall * 3600}


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.bench_parallel", description=__doc__)
    p.add_argument("--config", default="tiny", help="instance set (default: tiny)")
    p.add_argument("--n-envs", type=positive_int, default=2, help="the parallel width compared with 1 (default: 2)")
    p.add_argument("--episodes-per-env", type=positive_int, default=6, help="episodes each actor runs (default: 6)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "ray_parallel.json"))
    return p


def main(argv: Optional[list[str]] = None) -> None:
    def bench(args: argparse.Namespace) -> None:
        import ray

        from agents.parallel.ray_cluster import init_ray
        from trainers.bench_session import write_record

        cfg_dict = load_config(args.config).model_dump(mode="json")
        init_ray(num_cpus=max(args.n_envs, 1))
        one = episodes_per_hour(cfg_dict, 1, args.episodes_per_env)
        many = episodes_per_hour(cfg_dict, args.n_envs, args.episodes_per_env)
        ray.shutdown()
        figures = {"config": args.config, "one_env": one, f"{args.n_envs}_envs": many,
                   "speedup": many["episodes_per_hour"] / one["episodes_per_hour"]}
        write_record(Path(args.out), argv, "agents.bench_parallel", figures)
        print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))

    run_command(build_parser(), bench, argv)


if __name__ == "__main__":
    main()
