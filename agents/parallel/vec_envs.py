"""Parallel fine-tuning environments as an SB3 VecEnv: in-process, subprocesses, or Ray actors.
Every sub-environment owns its own DeepSpeed session."""
from __future__ import annotations

import functools
from typing import Optional

from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from agents.parallel.env_factory import make_env
from trainers.config import InstanceSetConfig

BACKENDS = ("inprocess", "subproc", "ray")


def make_vec_env(cfg: InstanceSetConfig, n_envs: int = 1, backend: str = "inprocess",
                 ray_address: Optional[str] = None, seed: Optional[int] = None, max_restarts: int = 3,
                 reference_folder: Optional[str] = None) -> VecEnv:
    """backend: 'inprocess' (one process, n engines), 'subproc' (a process per env), 'ray' (an actor
    per env, each restarted at most max_restarts times). reference_folder: see env_factory.make_env."""
    options = {"reference_folder": reference_folder} if reference_folder else {}
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    cfg_dict = cfg.model_dump(mode="json")
    if backend == "ray":
        from agents.parallel.ray_vec_env import RayVecEnv

        return RayVecEnv(cfg_dict, n_envs, address=ray_address, seed=seed, max_restarts=max_restarts,
                         env_options=options)
    fns = [functools.partial(make_env, cfg_dict, rank, **options) for rank in range(n_envs)]
    if backend == "subproc" and n_envs > 1:
        return SubprocVecEnv(fns, start_method="spawn")
    return DummyVecEnv(fns)


def in_process_sessions(venv: VecEnv) -> Optional[dict]:
    """The DeepSpeed sessions (by trainable depth) of an in-process VecEnv's first environment, for
    work in the same process to reuse rather than build a second engine; None when the
    environments live in other processes (subprocesses, Ray actors). The one way engines are
    reached from outside a training run."""
    if isinstance(venv, DummyVecEnv):
        return venv.envs[0].unwrapped.sessions
    return None
