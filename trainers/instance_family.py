"""Generate a procedural SmolLM2 instance family, written as data: configs/instances/<family>.yaml.

    python -m trainers.instance_family [--seed 0] [--out configs/instances/smollm2_wide.yaml]

Each instance draws, from a seeded generator, the axes practitioners vary when they fine-tune:
  dataset     data source x task kind (a pool per dataset: its instances share splits and cache)
  data size   the first n training examples of the pool (train_examples)
  budget      optimizer steps, log-uniform in [30, 200], a multiple of the decision interval (10)
  adapter     the last k in {1, 2, 4, 8} layers' own weights, or LoRA of rank r in {4, 16, 64}
              on the last 4 layers (on one CPU core the adapters sit on the trainable tail, so
              the frozen prefix's cached states still serve)
  batch       gradient accumulation in {1, 2, 4} micro-batches of 4 (effective batch 4 to 16)
An instance whose estimated episode (measured micro-step seconds, results/bench_engines_smollm2.json,
times budget x accumulation; x2.5 where the LM head runs at every position) exceeds MAX_EPISODE_S
on one core is drawn again: that caps the cost, and it is the one place the draw is not uniform.

Held-out rule (tests/test_shipped_configs.py checks it): no held-out instance uses a training
dataset; most held-out instances come from data source x task kind families no training instance
uses; a few sit just outside the training range of one axis (a longer budget, an unseen rank, a
bigger batch) and carry tags [extrapolation, <axis>].
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from trainers.atomic_files import write_text_atomic
from trainers.cli import CommandParser, nonnegative_int, run_command
from trainers.config import REPO_ROOT

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
FULL_DEPTHS = (1, 2, 4, 8)
LORA_RANKS = (4, 16, 64)
LORA_DEPTH = 4
ACCUMULATION = (1, 2, 4)
BUDGET = (30, 200)
DECISION_INTERVAL = 10
MAX_EPISODE_S = 60.0
# median seconds of one micro-batch of 4 x 64 tokens on one core (python -m trainers.bench_engines)
MICRO_STEP_S = {("full", 1): 0.19, ("full", 2): 0.25, ("full", 4): 0.45, ("full", 8): 0.80, ("lora", 4): 0.32}
LM_FACTOR = 2.5  # text: the LM head runs at all 64 positions, not at a few label positions

# (name, dataset, family, instances): the pools. Families are data source x task kind.
TRAIN_POOLS = [
    ("bbc-topic", {"kind": "bbc_topic", "source": "headline", "max_train_examples": 256, "prompt_template": CHAT},
     "bbc x classification", 12),
    ("chitchat-replies", {"kind": "chitchat", "max_train_examples": 256, "max_text_words": 12, "prompt_template": CHAT},
     "chitchat x reply generation", 10),
    ("arithmetic", {"kind": "arithmetic", "max_train_examples": 256, "prompt_template": CHAT},
     "arithmetic x short answer", 12),
    ("bbc-business-lm", {"kind": "bbc_lm", "topic": "business", "max_train_examples": 24}, "bbc x language modelling", 7),
    ("bbc-sport-lm", {"kind": "bbc_lm", "topic": "sport", "max_train_examples": 24}, "bbc x language modelling", 7),
]
HELDOUT_POOLS = [
    # seen families, unseen data
    ("bbc-topic-first-sentence", {"kind": "bbc_topic", "source": "first_sentence", "max_train_examples": 256,
                                  "max_text_words": 16, "prompt_template": CHAT}, "bbc x classification", 2),
    ("bbc-tech-lm", {"kind": "bbc_lm", "topic": "tech", "max_train_examples": 24}, "bbc x language modelling", 2),
    # unseen families
    ("bbc-headline-writing", {"kind": "bbc_headline", "max_train_examples": 256, "max_text_words": 16,
                              "prompt_template": CHAT}, "bbc x generation", 3),
    ("chitchat-lm", {"kind": "chitchat_lm", "max_train_examples": 24}, "chitchat x language modelling", 2),
    ("math-place-value", {"kind": "math", "module": "numbers.place_value", "max_train_examples": 256,
                          "prompt_template": CHAT}, "mathematics-dataset x short answer", 2),
    ("math-compare-pair", {"kind": "math", "module": "comparison.pair", "max_train_examples": 256,
                           "prompt_template": CHAT}, "mathematics-dataset x short answer", 2),
]
# one held-out instance per axis just outside the training range: (axis, pool, what changes)
EXTRAPOLATION = [
    ("budget", "bbc-headline-writing", {"total_steps": 300, "adapter": ("full", 1), "accumulation": 1}),
    ("lora_rank", "math-compare-pair", {"adapter": ("lora", 128)}),
    ("accumulation", "math-place-value", {"accumulation": 8, "total_steps": 40}),
]
DATA_SIZES = (32, 64, 128, 256)


def is_text(dataset: dict) -> bool:
    return dataset["kind"] in ("bbc_lm", "chitchat_lm")


def estimated_seconds(dataset: dict, adapter: tuple[str, int], steps: int, accumulation: int) -> float:
    kind, x = adapter
    per_micro = MICRO_STEP_S[(kind, x if kind == "full" else LORA_DEPTH)]
    return steps * accumulation * per_micro * (LM_FACTOR if is_text(dataset) else 1.0)


def _draw(rng: np.random.Generator, dataset: dict) -> dict[str, Any]:
    while True:
        lo, hi = BUDGET
        steps = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))) / DECISION_INTERVAL)) * DECISION_INTERVAL
        if rng.random() < 0.5:
            adapter = ("full", int(rng.choice(FULL_DEPTHS)))
        else:
            adapter = ("lora", int(rng.choice(LORA_RANKS)))
        accumulation = int(rng.choice(ACCUMULATION))
        size = int(rng.choice(DATA_SIZES))
        if estimated_seconds(dataset, adapter, steps, accumulation) <= MAX_EPISODE_S:
            return {"total_steps": steps, "adapter": adapter, "accumulation": accumulation, "train_examples": size}


def _instance(name: str, dataset: dict, draw: dict[str, Any], tags: Optional[list[str]] = None) -> dict[str, Any]:
    kind, x = draw["adapter"]
    inst: dict[str, Any] = {"name": name, "dataset": dataset, "total_steps": draw["total_steps"]}
    if kind == "full":
        inst["trainable_layers"] = x
    else:
        inst["trainable_layers"] = LORA_DEPTH
        inst["lora"] = {"rank": x}
    if draw["accumulation"] != 1:
        inst["gradient_accumulation_steps"] = draw["accumulation"]
    if draw.get("train_examples"):
        inst["train_examples"] = draw["train_examples"]
    inst["init_lr"] = [1.0e-5, 1.0e-2]
    if tags:
        inst["tags"] = tags
    return inst


def _label(draw: dict[str, Any]) -> str:
    kind, x = draw["adapter"]
    adapter = f"k{x}" if kind == "full" else f"lora{x}"
    return f"{adapter}-b{draw['total_steps']}-ga{draw['accumulation']}-n{draw.get('train_examples') or 'all'}"


def generate(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The family: {'train': [...], 'heldout': [...]} as plain data, the same for the same seed."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    for group, pools in (("train", TRAIN_POOLS), ("heldout", HELDOUT_POOLS)):
        for pool, dataset, _family, count in pools:
            labels: set[str] = set()
            for _ in range(count):
                draw = _draw(rng, dataset)
                while _label(draw) in labels:  # no instance repeats another of its pool
                    draw = _draw(rng, dataset)
                labels.add(_label(draw))
                out[group].append(_instance(f"{pool}-{_label(draw)}", dataset, draw))
    pools = {p: d for p, d, _, _ in HELDOUT_POOLS}
    for axis, pool, change in EXTRAPOLATION:
        draw = {**_draw(rng, pools[pool]), **change}
        out["heldout"].append(_instance(f"{pool}-{_label(draw)}", pools[pool], draw, ["extrapolation", axis]))
    return out


FAMILIES = {p: f for p, _, f, _ in TRAIN_POOLS + HELDOUT_POOLS}


def render(seed: int, out: Path) -> str:
    family = generate(seed)
    rel = out.resolve().relative_to(REPO_ROOT) if out.resolve().is_relative_to(REPO_ROOT) else out
    header = [f"# Generated by: python -m trainers.instance_family --seed {seed} --out {rel}",
              "# Do not edit by hand: change the generator (trainers/instance_family.py) and run it again.",
              f"# {len(family['train'])} training and {len(family['heldout'])} held-out SmolLM2 instances; names read",
              "# <pool>-<k layers | lora rank>-b<budget steps>-ga<accumulation>-n<training examples>.",
              "# Families (data source x task kind) by pool:"]
    header += [f"#   {pool}: {fam}" for pool, fam in FAMILIES.items()]
    header += ["# Held-out rule: see the generator's docstring; tests/test_shipped_configs.py checks it.", ""]
    lines = []
    for group, insts in family.items():  # one instance per line: a diff shows what a change moved
        lines.append(f"{group}:")
        lines += [f"  - {_flow(inst)}" for inst in insts]
    return "\n".join(header + lines) + "\n"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_NoAliases.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None))


def _flow(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_NoAliases, default_flow_style=True, sort_keys=False, width=10**6).strip()


def parser() -> CommandParser:
    p = CommandParser(prog="python -m trainers.instance_family", description=__doc__)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="the generator's seed (default 0)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "configs" / "instances" / "smollm2_wide.yaml",
                   help="the instance file to write (default configs/instances/smollm2_wide.yaml)")
    return p


def write(args: argparse.Namespace) -> int:
    text = render(args.seed, args.out)
    write_text_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command(parser(), write))
