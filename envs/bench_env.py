"""Benchmark: what the environment costs on top of bare DeepSpeed training.

    python -m envs.bench_env [--config tiny] [--json]

Bare-loop steps and env-driven steps run interleaved in one process on the same engine, so the
ratio is measured under the same machine load. Both are timed the same way: the wall time of one
decision interval's steps divided by its length (for env.step, minus its evaluation), then the
median over intervals. ``train_step_s_raw_single_step_median`` is the bare loop's median single
step, for reference: it is lower because a median of single steps drops the occasional slow step.
``deepspeed_initialize_calls`` is counted by wrapping ``deepspeed.initialize`` for the whole run.
The bare step and the session alone are measured by ``python -m trainers.bench_session``.
Figures go to stdout and to results/bench.json.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from trainers.bench_session import bare_steps, counting_deepspeed_initialize, print_figures, write_record
from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, load_config


def run(config: str = "tiny", rounds: int = 5, seed: int = 0) -> dict:
    from envs.finetune_env import FineTuneEnv

    with counting_deepspeed_initialize() as calls:
        env = FineTuneEnv(config, split="train")
        rng = np.random.default_rng(seed)
        env.reset(seed=seed)  # first reset builds data and the cached initial eval
        raw, raw_single, in_env, resets, evals, tokens, train_s = [], [], [], [], [], 0, 0.0
        for r in range(rounds):
            # bare loop on the same engine, from the base snapshot, timed per decision interval
            env.reset(seed=seed + r)
            k = env.cfg.episode.decision_interval
            g = torch.Generator().manual_seed(seed + r)
            for _ in range(env.total_steps // k):
                t0 = time.perf_counter()
                single = bare_steps(env.session, k, g)
                raw += [(time.perf_counter() - t0) / k] * k
                raw_single += single
            # a whole episode through env.step with random actions
            t0 = time.perf_counter()
            env.reset(seed=seed + r)
            resets.append(time.perf_counter() - t0)
            done = False
            while not done:
                t0 = time.perf_counter()
                action = (rng.uniform(-0.3, 0.3, env.action_space.shape).astype(np.float32)
                          if env.cfg.action.mode == "box" else env.action_space.sample())
                _, _, term, trunc, info = env.step(action)
                wall = time.perf_counter() - t0
                k = len(info["train_loss"])
                in_env += [(wall - env.timing["eval_seconds"]) / k] * k
                evals.append(env.timing["eval_seconds"])
                tokens += info["tokens"]
                train_s += env.timing["train_seconds"]
                done = term or trunc
    raw_med, env_med = statistics.median(raw), statistics.median(in_env)
    return {
        "config": config,
        "rounds": rounds,
        "train_step_s_raw": raw_med,
        "train_step_s_raw_single_step_median": statistics.median(raw_single),
        "train_step_s_in_env": env_med,
        "overhead_ratio": env_med / raw_med,
        "reset_s": statistics.median(resets),
        "reset_over_train_step": statistics.median(resets) / raw_med,
        "eval_s": statistics.median(evals),
        "tokens_per_s": tokens / train_s,
        "n_raw_steps": len(raw),
        "n_env_steps": len(in_env),
        "deepspeed_initialize_calls": len(calls),
    }


def main(argv: list[str] | None = None) -> None:
    p = CommandParser(prog="python -m envs.bench_env", description=__doc__)
    p.add_argument("--config", default="tiny", help="instance set name or YAML path (default: tiny)")
    p.add_argument("--rounds", type=positive_int, default=5, help="episodes measured each way (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "bench.json"), help="where to write the figures")

    def go(args: argparse.Namespace) -> None:
        load_config(args.config)  # a bad config stops here, before any engine is built
        figures = run(args.config, args.rounds)
        print_figures(figures, args.json, write_record(Path(args.out), argv, "envs.bench_env", figures))

    run_command(p, go, argv)


if __name__ == "__main__":
    main()
