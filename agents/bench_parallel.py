"""Benchmark: fine-tuning episodes per hour with 1 and with N Ray actors, in one run.

    python -m agents.bench_parallel --json [--n-envs 2] [--episodes-per-env 6]

Random small actions; the same number of episodes per actor at every width, so the ratio is
throughput bought by parallelism. Figures go to stdout and results/ray_parallel.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from trainers.config import REPO_ROOT, load_config


def episodes_per_hour(cfg_dict: dict, n_envs: int, episodes_per_env: int, seed: int = 0) -> dict:
    from agents.ray_vec_env import RayVecEnv

    venv = RayVecEnv(cfg_dict, n_envs)
    rng = np.random.default_rng(seed)
    venv.seed(seed)
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


def main(argv: list[str] | None = None) -> None:
    import ray

    from agents.ray_vec_env import init_ray
    from trainers.bench import machine_info

    p = argparse.ArgumentParser(prog="python -m agents.bench_parallel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="instance set (default: tiny)")
    p.add_argument("--n-envs", type=int, default=2, help="the parallel width compared with 1 (default: 2)")
    p.add_argument("--episodes-per-env", type=int, default=6, help="episodes each actor runs (default: 6)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "ray_parallel.json"))
    args = p.parse_args(argv)
    cfg_dict = load_config(args.config).model_dump(mode="json")
    init_ray(num_cpus=max(args.n_envs, 1))
    one = episodes_per_hour(cfg_dict, 1, args.episodes_per_env)
    many = episodes_per_hour(cfg_dict, args.n_envs, args.episodes_per_env)
    ray.shutdown()
    figures = {"config": args.config, "one_env": one, f"{args.n_envs}_envs": many,
               "speedup": many["episodes_per_hour"] / one["episodes_per_hour"]}
    record = {"command": "python -m agents.bench_parallel " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
