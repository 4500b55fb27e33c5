"""An instance set retargeted at a user's own data file or model: how agents.tune and agents.compare
run a learned controller on what the user brings."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainers.config import InstanceSetConfig, deep_merge, parse_config


def model_setting(model: str) -> str:
    """A model folder as an absolute path (Ray Tune's trials and worker processes do not run in
    this directory); a preset name as it is."""
    from trainers.models import PRESETS

    return model if model in PRESETS or not Path(model).is_dir() else str(Path(model).resolve())


def with_user_data(base: InstanceSetConfig, data: str, model: Optional[str], steps: Optional[int]) -> InstanceSetConfig:
    """The set with the user's JSONL file as its last held-out instance, started at the default
    recipe, on the user's model if given. The file is read here, so a bad one stops before any
    engine is built."""
    from trainers.data import read_jsonl

    read_jsonl(data)
    d = base.model_dump(mode="json")
    rec = d["default_recipe"]
    inst = {"name": Path(data).stem, "dataset": {"kind": "jsonl", "path": str(Path(data).resolve())},
            "init_lr": [rec["lr"], rec["lr"]], "init_weight_decay": [max(rec["weight_decay"], 1e-4)] * 2,
            "init_grad_clip": [rec["grad_clip"]] * 2}
    if steps:
        inst["total_steps"] = steps
    d = deep_merge(d, {"heldout": [inst]})
    if model:
        d["session"]["model"] = model_setting(model)
    return parse_config(d, source="--data / --model")


def with_model(cfg: InstanceSetConfig, model: str) -> InstanceSetConfig:
    """The same instance set on another model (a Hugging Face folder or a preset)."""
    return parse_config(deep_merge(cfg.model_dump(mode="json"), {"session": {"model": model_setting(model)}}))


def with_set_ranges(cfg: InstanceSetConfig) -> InstanceSetConfig:
    """The user's instance (the last held-out one) with starting ranges spanning the other
    instances': a comparison needs a range that every method (the policy's draws, the searches'
    priors, PBT's population) shares, where agents.tune starts its one run at the default recipe."""
    d = cfg.model_dump(mode="json")
    others = d["train"] + d["heldout"][:-1]
    for knob in ("init_lr", "init_weight_decay", "init_grad_clip"):
        d["heldout"][-1][knob] = [min(i[knob][0] for i in others), max(i[knob][1] for i in others)]
    return parse_config(d, source="--data")


def _with_instance_fields(cfg: InstanceSetConfig, instance: str, fields: dict, source: str = "<dict>") -> InstanceSetConfig:
    """The set with some fields of one instance replaced."""
    d = cfg.model_dump(mode="json")
    for group in ("train", "heldout"):
        for i in d[group]:
            if i["name"] == instance:
                i.update(fields)
    return parse_config(d, source=source)


def with_steps(cfg: InstanceSetConfig, instance: str, steps: int) -> InstanceSetConfig:
    """The set with one instance's budget changed."""
    return _with_instance_fields(cfg, instance, {"total_steps": steps})


def with_lora(cfg: InstanceSetConfig, instance: str, rank: int) -> InstanceSetConfig:
    """The set with one instance trained through LoRA adapters of this rank (alpha 2 x rank) on
    every linear layer of its trainable layers, instead of those layers' own weights."""
    return _with_instance_fields(cfg, instance, {"lora": {"rank": rank, "target_modules": ["all-linear"]}},
                                 source="--lora-rank")
