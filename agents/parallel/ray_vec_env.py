"""An SB3 VecEnv whose sub-environments are Ray actors, each with its own DeepSpeed session.

One actor per environment: one GPU each where the cluster has GPUs, else one CPU with one torch
thread; actors are spread over the cluster's nodes. Worker faults are handled honestly:

- A worker that dies (killed, out of memory, its node lost) or hangs past ``call_timeout_s`` is
  restarted by Ray (a hung one is killed first). The episode it was running is lost: the step
  comes back with ``done`` and ``info["dropped"]`` (the reason), and without a terminal
  observation, because there is none. The learners leave the whole interrupted episode out of what
  they train on (``agents.learners.dropped_episodes``); nothing is invented for them.
- The restarted worker resets with a seed drawn from (run seed, env, failure count), so the run
  stays reproducible on one machine.
- Restarts are bounded: a worker that fails more than ``max_restarts`` times (one that crashes at
  every start, say) stops the run with ``WorkerFailure`` naming the env and the cause.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional, Sequence

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

log = logging.getLogger(__name__)


class WorkerFailure(RuntimeError):
    """An environment worker failed more often than allowed; the run cannot go on."""


class LostEpisode(RuntimeError):
    """A step reached a worker that Ray restarted between calls: its episode is gone."""


class EnvWorker:
    """Lives in a Ray actor: one FineTuneEnv, auto-reset like SB3's VecEnvs."""

    def __init__(self, cfg_dict: dict, rank: int, **env_options: Any) -> None:
        from agents.parallel.env_factory import make_env  # the session picks its device and accelerator

        self.env = make_env(cfg_dict, rank, **env_options)
        self.last_reset_seed: Optional[int] = None

    def where(self) -> dict[str, Any]:
        """Process id and Ray node id of this worker (tests kill it; logs say where it ran)."""
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                "last_reset_seed": self.last_reset_seed}

    def reset(self, seed: Optional[int] = None):
        self.last_reset_seed = seed
        obs, _ = self.env.reset(seed=seed)
        return obs

    def step(self, action):
        if self.env.log is None:  # killed while idle, restarted by Ray before this call reached it
            raise LostEpisode(f"a fresh worker (pid {os.getpid()}) got a step with no episode to go on with")
        obs, reward, term, trunc, info = self.env.step(action)
        done = term or trunc
        if done:
            info["terminal_observation"] = obs
            info["TimeLimit.truncated"] = trunc and not term
            obs, _ = self.env.reset()
        return obs, reward, done, info


class RayVecEnv(VecEnv):
    def __init__(self, cfg_dict: dict, n_envs: int, address: Optional[str] = None, seed: Optional[int] = None,
                 max_restarts: int = 3, call_timeout_s: float = 1800.0, start_timeout_s: float = 3600.0,
                 worker_cls: type = EnvWorker, env_options: Optional[dict] = None) -> None:
        """call_timeout_s bounds one decision interval on a worker; start_timeout_s bounds a reset,
        which on a fresh worker builds the engine and the data (minutes for big models).
        env_options: keyword arguments of every worker's environment (env_factory.make_env)."""
        import ray
        from gymnasium import spaces

        from agents.parallel.ray_cluster import init_ray, worker_resources
        from envs.finetune_env import action_map_for
        from envs.features import OBS_HIGH, OBS_LOW, feature_names
        from trainers.config import parse_config

        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        self.started_ray = init_ray(address)
        cfg = parse_config(cfg_dict)
        self.max_restarts, self.call_timeout_s, self.start_timeout_s = max_restarts, call_timeout_s, start_timeout_s
        self._actor_cls = ray.remote(max_restarts=max_restarts, max_task_retries=0, scheduling_strategy="SPREAD",
                                     **worker_resources())(worker_cls)
        self._env_options = dict(env_options or {})
        self.workers = [self._actor_cls.remote(cfg_dict, rank, **self._env_options) for rank in range(n_envs)]
        self.failures = [0] * n_envs
        self.dropped: list[dict[str, Any]] = []
        self._base_seed = seed
        self._seeds: list[Optional[int]] = [None if seed is None else seed + i for i in range(n_envs)]
        self._pending: list = []
        obs_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(len(feature_names(cfg.control.features)),), dtype=np.float32)
        super().__init__(n_envs, obs_space, action_map_for(cfg).space)

    # ------------------------------------------------------------ VecEnv API
    def reset(self):
        refs = [w.reset.remote(s) for w, s in zip(self.workers, self._seeds)]
        out = []
        for i, res in enumerate(self._gather(refs, self.start_timeout_s)):
            if isinstance(res, BaseException):
                self._failed(i, res)
                seed = self._seeds[i] if self._seeds[i] is not None else self._restart_seed(i)
                res = self._restart_and_reset(i, seed)
            out.append(np.asarray(res))
        self._seeds = [None] * self.num_envs
        return np.stack(out)

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = [w.step.remote(a) for w, a in zip(self.workers, actions)]

    def step_wait(self):
        obs, rews, dones, infos = [], [], [], []
        for i, res in enumerate(self._gather(self._pending, self.call_timeout_s)):
            if isinstance(res, BaseException):
                reason = self._failed(i, res)
                seed = self._restart_seed(i)
                o = self._restart_and_reset(i, seed)
                self.dropped.append({"env": i, "reason": reason, "restart_seed": seed})
                # done, with no terminal observation: the episode ended without a real last state
                r, d, info = 0.0, True, {"dropped": reason}
            else:
                o, r, d, info = res
            obs.append(np.asarray(o))
            rews.append(r)
            dones.append(d)
            infos.append(info)
        return np.stack(obs), np.asarray(rews, dtype=np.float32), np.asarray(dones), infos

    # ------------------------------------------------------------ faults
    def _gather(self, refs: list, timeout_s: float) -> list[Any]:
        """Each call's result, or the exception that stands for a dead or hung worker. Errors
        raised by the environment's own code are not worker faults: they propagate. A step that
        reached a worker restarted while idle (LostEpisode) is one."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        _, not_ready = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        pending = set(not_ready)
        out: list[Any] = []
        for ref in refs:
            if ref in pending:
                out.append(GetTimeoutError(f"no answer within {timeout_s:.0f} s"))
                continue
            try:
                out.append(ray.get(ref))
            except RayActorError as err:
                out.append(err)
            except RayTaskError as err:  # the environment's own errors propagate; a lost episode is a fault
                if not isinstance(err.cause, LostEpisode):
                    raise
                out.append(err)
        return out

    def _failed(self, i: int, err: BaseException) -> str:
        """Count a failure of worker i; kill it if it hangs (Ray restarts it); stop the run when it
        has failed more than max_restarts times."""
        import ray
        from ray.exceptions import GetTimeoutError

        self.failures[i] += 1
        what = "hung" if isinstance(err, GetTimeoutError) else "died"
        cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        reason = f"env {i}: worker {what} ({type(err).__name__}: {cause}); episode dropped, worker restarted"
        if self.failures[i] > self.max_restarts:
            raise WorkerFailure(f"env {i}: its Ray worker failed {self.failures[i]} times (limit --max-restarts "
                                f"{self.max_restarts}); last: {what} ({type(err).__name__}: {cause})")
        if isinstance(err, GetTimeoutError):
            ray.kill(self.workers[i], no_restart=False)
        log.warning(reason)
        return reason

    def _restart_seed(self, i: int) -> int:
        return int(np.random.SeedSequence([self._base_seed or 0, i, self.failures[i]]).generate_state(1)[0])

    def _restart_and_reset(self, i: int, seed: Optional[int]) -> np.ndarray:
        """Reset worker i once Ray has brought it back (a fresh process builds a new engine)."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                return np.asarray(ray.get(self.workers[i].reset.remote(seed), timeout=self.start_timeout_s))
            except ActorUnavailableError:  # still restarting
                if time.monotonic() > deadline:
                    self._failed(i, GetTimeoutError(f"not back within {self.start_timeout_s:.0f} s"))
                    deadline = time.monotonic() + self.start_timeout_s
                time.sleep(0.5)
            except (RayActorError, GetTimeoutError) as err:  # died again while starting, or hung
                self._failed(i, err)
                deadline = time.monotonic() + self.start_timeout_s

    # ------------------------------------------------------------ the rest of the VecEnv API
    def worker_info(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([w.where.remote() for w in self.workers], timeout=self.call_timeout_s)

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.worker_info()]

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w, no_restart=True)
        if self.started_ray:
            ray.shutdown()

    def seed(self, seed: Optional[int] = None) -> Sequence[None]:
        if seed is not None:
            self._base_seed = seed
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
