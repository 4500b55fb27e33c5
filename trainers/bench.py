"""Benchmark: what the environment costs on top of bare DeepSpeed training.

    python -m trainers.bench --json

Bare-loop steps and env-driven steps run interleaved in one process on the same engine, so the
ratio is measured under the same machine load. Both are timed the same way: the wall time of one
decision interval's steps divided by its length (for env.step, minus its evaluation), then the
median over intervals. ``train_step_s_raw_single_step_median`` is the bare loop's median single
step, for reference: it is lower because a median of single steps drops the occasional slow step.
Figures go to stdout and to results/bench.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trainers.config import REPO_ROOT
from trainers.data import TokenizedSplit


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=30)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    import os

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
        # the machine is shared: its load when the figures were taken says how far to trust them
        "loadavg_1_5_15min": [round(x, 2) for x in os.getloadavg()],
    }


def bare_steps(session, n: int, g: torch.Generator | None = None) -> list[float]:
    """The training step with nothing around it: batch, forward, backward, step."""
    engine, data, bs = session.engine, session.data.train, session.cfg.micro_batch_size
    g = g if g is not None else torch.Generator().manual_seed(0)
    times = []
    engine.train()
    for _ in range(n):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(data), (bs,), generator=g)
        out = engine(input_ids=data.input_ids[idx], attention_mask=data.attention_mask[idx], labels=data.labels[idx])
        engine.backward(out.loss)
        engine.step()
        times.append(time.perf_counter() - t0)
    return times


def run(config: str = "tiny", rounds: int = 5, seed: int = 0) -> dict:
    from envs.finetune_env import FineTuneEnv

    env = FineTuneEnv(config, split="train")
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)  # first reset builds data and the cached initial eval
    raw, raw_single, in_env, resets, evals, tokens, train_s = [], [], [], [], [], 0, 0.0
    for r in range(rounds):
        # bare loop on the same engine (from the base snapshot, so both see the same model state)
        # timed in chunks of one decision interval, as env.step is: a median of single steps would
        # drop the slow steps that an interval's mean keeps, and call that difference "overhead"
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
        "deepspeed_initialize_calls": env.session.initialize_calls,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trainers.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="instance set name or YAML path (default: tiny)")
    p.add_argument("--rounds", type=int, default=5, help="episodes measured each way (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "bench.json"), help="where to write the figures")
    args = p.parse_args(argv)
    figures = run(args.config, args.rounds)
    record = {"command": "python -m trainers.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **figures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>28}: {v}")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
