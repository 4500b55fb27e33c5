"""Benchmark: what each engine configuration of a SmolLM2 family costs, in memory and per step.

    python -m trainers.bench_engines [--micro-batch 4] [--steps 12]

For a full tail of k in {1, 2, 4, 8} layers and LoRA of rank r in {4, 16, 64} on a tail of 4,
built one after another in one process (as an environment keeps them): the resident memory each
engine adds (psutil RSS after building and one step, minus before), and the median seconds of
one micro-batch's forward/backward/step on a prompt/answer task (bbc_topic, seq_len 64, one torch
thread). Figures go to stdout and results/bench_engines_smollm2.json, with the machine.
"""
from __future__ import annotations

import statistics
import sys

import psutil
import torch

from trainers.atomic_files import write_json_atomic
from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, DatasetSpec, LoraSpec, SessionConfig
from trainers.provenance import machine_info, utc_now

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
CONFIGS = [("full", k, None) for k in (1, 2, 4, 8)] + [("lora", 4, r) for r in (4, 16, 64)]


def parser() -> CommandParser:
    p = CommandParser(prog="python -m trainers.bench_engines", description=__doc__)
    p.add_argument("--micro-batch", type=positive_int, default=4, help="examples per micro-batch (default 4)")
    p.add_argument("--steps", type=positive_int, default=12, help="timed micro-steps per engine (default 12)")
    return p


def measure(args) -> int:
    argv = sys.argv[1:]
    from trainers.data import build_task_data
    from trainers.session import FineTuneSession, Hparams

    torch.set_num_threads(1)
    proc = psutil.Process()
    rows, sessions, raw = [], [], None
    for kind, k, rank in CONFIGS:
        before = proc.memory_info().rss
        cfg = SessionConfig(model="smollm2-135m", device="cpu", micro_batch_size=args.micro_batch, seq_len=64,
                            trainable_last_layers=k, frozen_prefix=True, lora=LoraSpec(rank=rank) if rank else None)
        s = FineTuneSession(cfg)
        if raw is None:  # one dataset, built once, prepared by each engine
            raw = build_task_data("bench", DatasetSpec(kind="bbc_topic", max_train_examples=64, prompt_template=CHAT),
                                  s.tokenizer, 64, 8, 8)
        prepared = s.prepare(raw)
        s.reset_to_base(0)
        s.use_data(prepared, 0)
        s.set_hparams(Hparams(1e-4, 0.0, 1.0))
        s.train(2)  # optimizer state exists from here on
        times = [m.seconds for m in s.train(args.steps)]
        added = (proc.memory_info().rss - before) / 2**20
        trainable = sum(p.numel() for p in s.engine.module.parameters() if p.requires_grad)
        row = {"adapter": kind, "tail_layers": k, "lora_rank": rank, "trainable_params": trainable,
               "rss_added_mib": round(added, 1), "micro_step_s": round(statistics.median(times), 4)}
        rows.append(row)
        print(row, flush=True)
        sessions.append(s)  # kept alive, as an environment keeps its engines
    out = REPO_ROOT / "results" / "bench_engines_smollm2.json"
    write_json_atomic(out, {"command": "python -m trainers.bench_engines " + " ".join(argv),
                            "machine": machine_info(), "when": utc_now(), "micro_batch": args.micro_batch,
                            "total_rss_mib": round(proc.memory_info().rss / 2**20, 1), "engines": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(parser(), measure))
