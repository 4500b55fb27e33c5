"""Fit the instance generator's cost model (trainers/instance_family.py: TRAIN_S, EVAL_S) to measured
episodes, so the cost cap prices instances by what they really took.

    python -m trainers.fit_episode_costs results/bench_family_smollm2_wide_draw2.json \\
        results/bench_family_smollm2_wide_draw2_instances.yaml --micro-batch 2 --eval-examples 32

The first file is python -m envs.bench_family's output (training and validation seconds per
episode), the second the instance file it measured. Least squares, no intercept:
  training seconds per step = accumulation x (micro-batch x (tokens x layers x full|lora + labels x head)
                              + micro_step) + full layers x optimizer
  validation seconds per pass = examples x (tokens x layers x full|lora + labels x head) + batches x batch
(micro_step and batch: what a forward/backward costs beyond its arithmetic, which short sequences
in small batches feel most)
with tokens, labels per pool from POOL_TOKENS. Prints the coefficients and the relative errors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import ConfigError, read_structured_file


def _pool(name: str) -> str:
    from trainers.instance_family import pool_of

    pool = pool_of(name)
    if pool is None:
        raise ConfigError(f"instance {name!r}: no pool of the generator's POOL_TOKENS starts its name")
    return pool


def fit(bench: dict, family: dict, micro_batch: int, eval_examples: int, interval: int = 10) -> dict:
    import numpy as np

    from trainers.instance_family import LORA_DEPTH, POOL_TOKENS

    insts = {i["name"]: i for group in ("train", "heldout") for i in family[group]}
    xt, yt, xe, ye = [], [], [], []
    for name, m in bench["episode_s"].items():
        if name not in insts:
            raise ConfigError(f"benchmark instance {name!r} is not in the instance file: give the file it measured")
        inst = insts[name]
        tokens, labels, eval_tokens = POOL_TOKENS[_pool(name)]
        lora = "lora" in inst
        if lora and inst["lora"]["rank"] not in (4, 16, 64):
            continue  # an extrapolation outside the drawn ranks
        k = LORA_DEPTH if lora else inst["trainable_layers"]
        gas, steps = inst.get("gradient_accumulation_steps", 1), inst["total_steps"]
        rows = min(eval_examples, inst["dataset"].get("max_validation_examples") or eval_examples)
        b = gas * micro_batch
        xt.append([b * tokens * k * (not lora), b * tokens * k * lora, b * labels, k * (not lora), gas])
        yt.append(m["train_seconds"] / steps)
        batches = -(-rows // (2 * micro_batch))  # evaluation runs batches of twice the micro-batch
        xe.append([rows * eval_tokens * k * (not lora), rows * eval_tokens * k * lora, rows * labels, batches])
        ye.append(m["eval_seconds"] / max(1, steps // interval))
    xt, yt, xe, ye = map(np.asarray, (xt, yt, xe, ye))
    ct = np.linalg.lstsq(xt, yt, rcond=None)[0]
    ce = np.linalg.lstsq(xe, ye, rcond=None)[0]
    et, ee = np.abs(xt @ ct / yt - 1), np.abs(xe @ ce / ye - 1)
    return {"TRAIN_S": dict(zip(("full_token_layer", "lora_token_layer", "head_label", "optimizer_layer", "micro_step"),
                                map(float, ct))),
            "EVAL_S": dict(zip(("full_token_layer", "lora_token_layer", "head_label", "batch"), map(float, ce))),
            "n_episodes": len(yt), "train_error_median": float(np.median(et)), "train_error_max": float(et.max()),
            "eval_error_median": float(np.median(ee)), "eval_error_max": float(ee.max())}


def parser() -> CommandParser:
    p = CommandParser(prog="python -m trainers.fit_episode_costs", description=__doc__)
    p.add_argument("bench", type=Path, help="python -m envs.bench_family's JSON")
    p.add_argument("instances", type=Path, help="the instance file that benchmark measured")
    p.add_argument("--micro-batch", type=positive_int, default=4, help="its session's micro-batch (default 4)")
    p.add_argument("--eval-examples", type=positive_int, default=48, help="its episode's eval_examples (default 48)")
    return p


def main(args: argparse.Namespace) -> int:
    bench = read_structured_file(args.bench, "benchmark file")
    family = read_structured_file(args.instances, "instance file")
    if not isinstance(bench, dict) or not isinstance(bench.get("episode_s"), dict):
        raise ConfigError(f"{args.bench}: no 'episode_s' table: is this python -m envs.bench_family's output?")
    if not isinstance(family, dict) or not all(isinstance(family.get(g), list) for g in ("train", "heldout")):
        raise ConfigError(f"{args.instances}: expected 'train' and 'heldout' lists of instances")
    print(json.dumps(fit(bench, family, args.micro_batch, args.eval_examples), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(parser(), main))
