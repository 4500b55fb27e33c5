"""Benchmark: the bare DeepSpeed training step of an instance set, and what the session adds.

    python -m trainers.bench_session [--config tiny] [--json]

On the first training instance's data, in one process and on one engine:
  train_step_s_raw       a bare ``engine(...) / backward / step`` loop, wall time of one decision
                         interval's steps divided by its length, median over intervals
  train_step_s_session   the same through ``FineTuneSession.train`` (batching, metrics, grad norm)
  reset_s                ``reset_to_base`` + ``use_data``: what an environment reset costs
  eval_s                 one validation pass
  deepspeed_initialize_calls   counted by wrapping ``deepspeed.initialize`` for the whole run
The environment's own overhead on top of this is measured by ``python -m envs.bench_env``.
Figures go to stdout and to results/bench_session_<config>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from trainers.atomic_files import write_json_atomic
from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, load_config
from trainers.provenance import machine_info, utc_now


@contextmanager
def counting_deepspeed_initialize() -> Iterator[list[int]]:
    """Count real ``deepspeed.initialize`` calls: the wrapper calls through and records one entry
    per call (the session looks the function up on the module at call time)."""
    import deepspeed

    real = deepspeed.initialize
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    deepspeed.initialize = counted
    try:
        yield calls
    finally:
        deepspeed.initialize = real


def bare_steps(session, n: int, g: torch.Generator | None = None) -> list[float]:
    """The training step with nothing around it: batch, forward, backward, step (for a frozen-prefix
    session the batch is the cached states, so the bare step is the tail's step)."""
    engine, data, bs = session.engine, session.data.train, session.cfg.micro_batch_size
    g = g if g is not None else torch.Generator().manual_seed(0)
    times = []
    engine.train()
    for _ in range(n):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(data), (bs,), generator=g)
        out = engine(**session.engine_inputs(data.select(idx)))
        engine.backward(out.loss)
        engine.step()
        times.append(time.perf_counter() - t0)
    return times


def interval_times(session, interval: int, n_intervals: int, seed: int) -> list[float]:
    """Per-step time of each decision interval of a bare loop (a median of single steps would drop
    the slow steps that an interval's mean keeps)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_intervals):
        _sync()
        t0 = time.perf_counter()
        bare_steps(session, interval, g)
        _sync()  # a GPU runs behind the Python loop: time the work, not the queueing
        out += [(time.perf_counter() - t0) / interval] * interval
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# dense bf16 peak of the GPUs this project has measured on (NVIDIA's data sheets, without sparsity)
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token when every weight trains: 6 N (forward and backward through the
    weights, embedding included as the tied LM head) plus 12 L d T for attention scores and values
    (PaLM, appendix B)."""
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq_len


def gpu_figures(session, step_s: float) -> dict:
    """Tokens per second and model FLOPs utilisation of the bare step, on a GPU with the whole model
    trainable (with a frozen part, 6 N would count work that is not done)."""
    if session.device != "cuda":
        return {}
    name = torch.cuda.get_device_name()
    tokens = session.cfg.micro_batch_size * session.cfg.seq_len  # padded positions: the GPU computes them too
    out = {"device_name": name, "bare_tokens_per_s": tokens / step_s,
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    model = session.engine.module
    if all(p.requires_grad for p in model.parameters()):
        flops = model_flops_per_token(model, session.cfg.seq_len) * tokens
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        out.update(model_flops_per_step=flops, mfu=flops / step_s / peak if peak else None,
                   mfu_peak_flops=peak)
    return out


def run(config: str = "tiny", rounds: int = 5, seed: int = 0, instance: str | None = None) -> dict:
    from trainers.data import build_task_data
    from trainers.session import FineTuneSession

    cfg = load_config(config)
    inst = cfg.instance(instance) if instance else cfg.train[0]
    k, total = cfg.episode.decision_interval, cfg.steps_for(inst)
    with counting_deepspeed_initialize() as calls:
        session = FineTuneSession(cfg.session_for(inst))
        t0 = time.perf_counter()
        data = session.prepare(build_task_data(inst.name, inst.dataset, session.tokenizer, cfg.session.seq_len,
                                               cfg.episode.eval_examples, cfg.episode.test_examples))
        data_s = time.perf_counter() - t0
        raw, in_session, resets, evals, tokens, train_s = [], [], [], [], 0, 0.0
        for r in range(rounds):
            t0 = time.perf_counter()
            session.reset_to_base(seed + r)
            session.use_data(data, seed + r)
            resets.append(time.perf_counter() - t0)
            raw += interval_times(session, k, max(total // k, 1), seed + r)
            session.reset_to_base(seed + r)
            session.use_data(data, seed + r)
            for _ in range(max(total // k, 1)):
                t0 = time.perf_counter()
                steps = session.train(k)
                in_session += [(time.perf_counter() - t0) / k] * k
                tokens += sum(s.tokens for s in steps)
                train_s += sum(s.seconds for s in steps)
            evals.append(session.evaluate("validation").seconds)
    raw_med = statistics.median(raw)
    return {
        "config": config,
        "instance": inst.name,
        "trainable_layers": session.cfg.trainable_last_layers,
        "frozen_prefix": session.cfg.frozen_prefix,
        "data_s": data_s,  # tokenising (and, for a frozen prefix, reading or building the cache)
        "rounds": rounds,
        "micro_batch_size": cfg.session.micro_batch_size,
        "seq_len": cfg.session.seq_len,
        "train_step_s_raw": raw_med,
        "train_step_s_session": statistics.median(in_session),
        "session_over_raw": statistics.median(in_session) / raw_med,
        "reset_s": statistics.median(resets),
        "eval_s": statistics.median(evals),
        "tokens_per_s": tokens / train_s,
        "n_raw_steps": len(raw),
        "deepspeed_initialize_calls": len(calls),
        **gpu_figures(session, raw_med),
    }


def write_record(out: str | Path, argv: list[str] | None, module: str, figures: dict) -> Path:
    record = {"command": f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(), "measured_at": utc_now(), **figures}
    return write_json_atomic(out, record)


def print_figures(figures: dict, as_json: bool, out: Path) -> None:
    import json

    if as_json:
        print(json.dumps(figures))
        return
    for k, v in figures.items():
        print(f"{k:>28}: {v}")
    print(f"written to {out}")


def main(argv: list[str] | None = None) -> None:
    p = CommandParser(prog="python -m trainers.bench_session", description=__doc__)
    p.add_argument("--config", default="tiny", help="instance set name or YAML path (default: tiny)")
    p.add_argument("--rounds", type=positive_int, default=5, help="episodes' worth of steps measured (default: 5)")
    p.add_argument("--instance", default=None, help="whose data and depth (default: the first training instance)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", default=None, help="where to write the figures (default: results/bench_session_<config>.json)")

    def go(args: argparse.Namespace) -> None:
        cfg = load_config(args.config)  # a bad config (or instance) stops here, before any engine is built
        if args.instance:
            cfg.instance(args.instance)
        figures = run(args.config, args.rounds, instance=args.instance)
        suffix = f"_{args.instance}" if args.instance else ""
        out = Path(args.out or REPO_ROOT / "results" / f"bench_session_{Path(args.config).stem}{suffix}.json")
        print_figures(figures, args.json, write_record(out, argv, "trainers.bench_session", figures))

    run_command(p, go, argv)


if __name__ == "__main__":
    main()
