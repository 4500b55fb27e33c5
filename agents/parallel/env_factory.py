"""One fine-tuning environment per worker (in-process, subprocess or Ray actor)."""
from __future__ import annotations

from typing import Any, Optional

from envs.episode import ReferenceRuns
from envs.finetune_env import FineTuneEnv
from trainers.config import parse_config


def make_env(cfg_dict: dict[str, Any], rank: int, reference_folder: Optional[str] = None) -> FineTuneEnv:
    """Picklable factory: builds one training FineTuneEnv (and its engine) where it is called.
    Instance order is offset per rank, so parallel episodes cover different training instances.
    reference_folder: where the base recipe's runs for the paired reward are kept (shared by the
    workers: each run is a file of its own, written whole)."""
    env = FineTuneEnv(parse_config(cfg_dict), split="train", instance_order="cycle",
                      references=ReferenceRuns(reference_folder))
    env.first_instance(rank)
    return env
