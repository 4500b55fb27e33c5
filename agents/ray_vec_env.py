"""An SB3 VecEnv whose sub-environments are Ray actors, each with its own DeepSpeed session.

One actor per environment: one GPU each where GPUs exist, else one CPU with one torch thread.
A dead actor (killed, out of memory) is restarted by Ray; the episode it was running is
dropped and handed to the learner as a time-limit truncation of its last good observation, so
no finished experience is lost and nothing fake is learned. Drops are counted and logged.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from trainers.config import REPO_ROOT, cache_root

log = logging.getLogger(__name__)
START_ATTEMPTS = 3


def _ray_home() -> Path:
    """Ray's usage-stats module probes cloud-metadata addresses unless ~/ray_bootstrap_config.yaml
    exists; the Ray processes started here get a HOME that has one saying the cluster is local.
    It also holds the cluster's auth token (Ray 2.60 turns token auth on for new local clusters)."""
    home = cache_root() / "ray_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    token = home / ".ray" / "auth_token"
    if not token.exists():
        token.parent.mkdir(exist_ok=True)
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return home


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Join a cluster, or start a private Ray bound to 127.0.0.1. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray reads this when ray is first imported; unset, it replaces 127.0.0.1 by the machine's
    # external address. Set it for this process and the ones Ray starts, and for a ray already imported.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    # Every Ray process finds the token here, whatever HOME it was started with.
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(_ray_home() / ".ray" / "auth_token")
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(_ray_home())  # inherited by the processes ray.init starts
    try:
        env_vars = {"HOME": str(_ray_home()), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO_ROOT),
                    "RAY_AUTH_TOKEN_PATH": os.environ["RAY_AUTH_TOKEN_PATH"],
                    "DSRL_CACHE": str(cache_root()), "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
        if os.environ.get("DS_ACCELERATOR"):  # an empty value would make DeepSpeed refuse to import
            env_vars["DS_ACCELERATOR"] = os.environ["DS_ACCELERATOR"]
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, runtime_env={"env_vars": env_vars})
                break
            except Exception as err:  # Ray gives its raylet a fixed 30 s to register; a loaded machine misses it
                if "timed out during startup" not in str(err) or attempt == START_ATTEMPTS:
                    raise
                log.warning("Ray's node did not start in time (attempt %d of %d); retrying", attempt, START_ATTEMPTS)
                ray.shutdown()
    finally:
        if old_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old_home
    return True


class EnvWorker:
    """Lives in a Ray actor: one FineTuneEnv, auto-reset like SB3's VecEnvs."""

    def __init__(self, cfg_dict: dict, rank: int, seed: Optional[int]) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
        from agents.vec_env import make_env

        self.env = make_env(cfg_dict, rank)
        self.seed = seed

    def pid(self) -> int:
        return os.getpid()

    def reset(self, seed: Optional[int] = None):
        obs, _ = self.env.reset(seed=seed)
        return obs

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        done = term or trunc
        if done:
            info["terminal_observation"] = obs
            info["TimeLimit.truncated"] = trunc and not term
            obs, _ = self.env.reset()
        return obs, reward, done, info


class RayVecEnv(VecEnv):
    def __init__(self, cfg_dict: dict, n_envs: int, address: Optional[str] = None) -> None:
        import ray

        from envs.actions import ActionMap
        from envs.features import FEATURE_NAMES, OBS_HIGH, OBS_LOW
        from gymnasium import spaces
        from trainers.config import parse_config

        self.started_ray = init_ray(address)
        cfg = parse_config(cfg_dict)
        gpus = ray.cluster_resources().get("GPU", 0)
        opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_cpus": 1}
        self._actor_cls = ray.remote(max_restarts=-1, max_task_retries=0, **opts)(EnvWorker)
        self.cfg_dict = cfg_dict
        self.workers = [self._actor_cls.remote(cfg_dict, rank, None) for rank in range(n_envs)]
        self.dropped: list[dict] = []
        self._seeds: list[Optional[int]] = [None] * n_envs
        self._last_obs: list[np.ndarray] = []
        self._pending: list = []
        obs_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(len(FEATURE_NAMES),), dtype=np.float32)
        super().__init__(n_envs, obs_space, ActionMap(cfg.action, cfg.bounds).space)

    # ------------------------------------------------------------ VecEnv API
    def reset(self):
        import ray

        obs = ray.get([w.reset.remote(s) for w, s in zip(self.workers, self._seeds)])
        self._seeds = [None] * self.num_envs
        self._last_obs = [np.asarray(o) for o in obs]
        return np.stack(self._last_obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = [w.step.remote(a) for w, a in zip(self.workers, actions)]

    def step_wait(self):
        import ray
        from ray.exceptions import RayActorError

        obs, rews, dones, infos = [], [], [], []
        for i, ref in enumerate(self._pending):
            try:
                o, r, d, info = ray.get(ref)
            except RayActorError as err:
                # Ray restarts the actor (fresh engine); the interrupted episode is dropped.
                reason = f"env {i}: worker died ({type(err).__name__}); episode dropped, worker restarted"
                log.warning(reason)
                self.dropped.append({"env": i, "reason": reason})
                o = self._reset_restarted(i)
                r, d = 0.0, True
                info = {"terminal_observation": self._last_obs[i], "TimeLimit.truncated": True, "dropped": reason}
            obs.append(np.asarray(o))
            rews.append(r)
            dones.append(d)
            infos.append(info)
        self._last_obs = obs
        return np.stack(obs), np.asarray(rews, dtype=np.float32), np.asarray(dones), infos

    def _reset_restarted(self, i: int, timeout_s: float = 900.0) -> np.ndarray:
        """Reset env i once Ray has brought its actor back (a fresh process builds a new engine)."""
        import ray
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return np.asarray(ray.get(self.workers[i].reset.remote(None)))
            except ActorUnavailableError:  # still restarting
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w, no_restart=True)
        if self.started_ray:
            ray.shutdown()

    def seed(self, seed: Optional[int] = None) -> Sequence[None]:
        if seed is not None:
            self._seeds = [seed + i for i in range(self.num_envs)]
        return [None] * self.num_envs

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [None for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        pass

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        raise NotImplementedError("RayVecEnv does not forward env methods")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
