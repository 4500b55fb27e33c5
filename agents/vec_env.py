"""Parallel fine-tuning environments as an SB3 VecEnv: in-process, subprocesses, or Ray actors.

Every sub-environment owns its own DeepSpeed session; instance order is offset per rank so
parallel episodes cover different training instances.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from trainers.config import InstanceSetConfig


def make_env(cfg_dict: dict[str, Any], rank: int, split: str = "train", evaluate_test: bool = False):
    """Picklable factory: builds one FineTuneEnv (and its engine) where it is called."""
    from envs.finetune_env import FineTuneEnv
    from trainers.config import parse_config

    env = FineTuneEnv(parse_config(cfg_dict), split=split, instance_order="cycle", evaluate_test=evaluate_test)
    env.first_instance(rank)
    return env


def make_vec_env(cfg: InstanceSetConfig, n_envs: int = 1, backend: str = "inprocess",
                 ray_address: Optional[str] = None) -> VecEnv:
    """backend: 'inprocess' (one process, n engines), 'subproc' (a process per env), 'ray'."""
    cfg_dict = cfg.model_dump(mode="json")
    fns = [functools.partial(make_env, cfg_dict, rank) for rank in range(n_envs)]
    if backend == "ray":
        from agents.ray_vec_env import RayVecEnv

        return RayVecEnv(cfg_dict, n_envs, address=ray_address)
    if backend == "subproc" and n_envs > 1:
        return SubprocVecEnv(fns, start_method="spawn")
    return DummyVecEnv(fns)
