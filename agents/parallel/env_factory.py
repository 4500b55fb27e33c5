"""One fine-tuning environment per worker (in-process, subprocess or Ray actor)."""
from __future__ import annotations

from typing import Any

from envs.finetune_env import FineTuneEnv
from trainers.config import parse_config


def make_env(cfg_dict: dict[str, Any], rank: int) -> FineTuneEnv:
    """Picklable factory: builds one training FineTuneEnv (and its engine) where it is called.
    Instance order is offset per rank, so parallel episodes cover different training instances."""
    env = FineTuneEnv(parse_config(cfg_dict), split="train", instance_order="cycle")
    env.first_instance(rank)
    return env
