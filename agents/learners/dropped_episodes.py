"""Interrupted episodes are left out of what a learner trains on.

When a Ray worker dies or hangs mid-episode (``agents.parallel.ray_vec_env``), its episode ends
with ``info["dropped"]`` and no real last transition. Nothing about that step is true: there is no
reward and no next state. These buffers leave out every transition of the interrupted episode that
is still in the buffer, the step that reports the drop included:

- ``DropAwareRolloutBuffer`` (PPO): the rows are left out of every minibatch, so they shape neither
  the policy nor the value function (earlier rollouts of the same episode were trained on already).
- ``DropAwareReplayBuffer`` (DQN): the rows are never sampled.

``mark_dropped`` is called by the training callback, which sees the step's infos before SB3 adds
the step to its buffer; it writes ``info["left_out_transitions"]``, which the training run records.
``DropAwarePPO`` skips an update whose rollout was left out entirely. Tabular Q-learning skips the
step itself (``QLearningAgent.learn``).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples


class _EpisodeRows:
    """Which buffer rows hold each env's current episode, and which rows are left out."""

    def _init_rows(self, buffer_size: int, n_envs: int, valid: bool) -> None:
        self.valid = np.full((buffer_size, n_envs), valid, dtype=bool)
        self._episode_rows: list[list[int]] = [[] for _ in range(n_envs)]
        self._drop_next: set[int] = set()

    def drop_episode(self, env: int, starts_now: bool = False) -> int:
        """Leave out env's current episode: the rows already added (none if it ``starts_now``, i.e.
        the previous step ended an episode), and the step about to be added. Returns how many
        transitions that leaves out."""
        if starts_now:
            self._episode_rows[env] = []
        rows = self._episode_rows[env]
        for row in rows:
            self.valid[row, env] = False
        self._episode_rows[env] = []
        self._drop_next.add(env)
        return len(rows) + 1

    def _track(self, pos: int, starts: Optional[np.ndarray] = None) -> None:
        for env in range(self.valid.shape[1]):
            if starts is not None and starts[env]:
                self._episode_rows[env] = []
            self._episode_rows[env].append(pos)
        for env in self._drop_next:
            self.valid[pos, env] = False
        self._drop_next = set()


class DropAwareRolloutBuffer(_EpisodeRows, RolloutBuffer):
    def reset(self) -> None:
        super().reset()
        self._init_rows(self.buffer_size, self.n_envs, valid=True)

    def add(self, obs, action, reward, episode_start, value, log_prob) -> None:
        self._track(self.pos, np.asarray(episode_start))
        super().add(obs, action, reward, episode_start, value, log_prob)

    def get(self, batch_size: Optional[int] = None):
        assert self.full, ""
        if not self.generator_ready:
            for tensor in ("observations", "actions", "values", "log_probs", "advantages", "returns"):
                self.__dict__[tensor] = self.swap_and_flatten(self.__dict__[tensor])
            self.generator_ready = True
        # swap_and_flatten orders rows env-major: flat index = env * buffer_size + step
        keep = np.flatnonzero(self.valid.swapaxes(0, 1).reshape(-1))
        indices = np.random.permutation(keep)
        batch_size = batch_size or len(indices)
        for start in range(0, len(indices), batch_size):
            yield self._get_samples(indices[start : start + batch_size])


class DropAwareReplayBuffer(_EpisodeRows, ReplayBuffer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.optimize_memory_usage:
            raise ValueError("DropAwareReplayBuffer does not support optimize_memory_usage")
        self._init_rows(self.buffer_size, self.n_envs, valid=False)

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        pos = self.pos
        self.valid[pos] = True
        self._track(pos)
        super().add(obs, next_obs, action, reward, done, infos)
        for env, d in enumerate(np.asarray(done).reshape(-1)):
            if d:
                self._episode_rows[env] = []

    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        upper = self.buffer_size if self.full else self.pos
        pairs = np.argwhere(self.valid[:upper])
        if len(pairs) == 0:
            raise ValueError("no transitions to sample: every stored step belongs to a dropped episode")
        pick = pairs[np.random.randint(0, len(pairs), size=batch_size)]
        rows, envs = pick[:, 0], pick[:, 1]
        data = (
            self._normalize_obs(self.observations[rows, envs, :], env),
            self.actions[rows, envs, :],
            self._normalize_obs(self.next_observations[rows, envs, :], env),
            (self.dones[rows, envs] * (1 - self.timeouts[rows, envs])).reshape(-1, 1),
            self._normalize_reward(self.rewards[rows, envs].reshape(-1, 1), env),
        )
        return ReplayBufferSamples(*tuple(map(self.to_torch, data)))


class DropAwarePPO(PPO):
    """PPO that skips its update when every transition of a rollout was left out (all workers
    failed within one rollout): there is nothing true to learn from."""

    def train(self) -> None:
        if isinstance(self.rollout_buffer, _EpisodeRows) and not self.rollout_buffer.valid.any():
            self.logger.record("train/skipped_empty_rollouts", 1)
            return
        super().train()


def mark_dropped(model: Any, infos: list[dict]) -> int:
    """Tell the learner's buffer which envs' episodes were interrupted at this step; strip the
    episode statistics VecMonitor attached to them (they are not an episode's return), and record
    in the info how many transitions were left out. Returns the number of envs dropped."""
    buffer = getattr(model, "rollout_buffer", None)
    if not isinstance(buffer, _EpisodeRows):
        buffer = getattr(model, "replay_buffer", None)
    # which envs' previous step ended an episode (PPO keeps this; DQN's buffer tracks it itself)
    starts = getattr(model, "_last_episode_starts", None)
    n = 0
    for env, info in enumerate(infos):
        if "dropped" in info:
            if not isinstance(buffer, _EpisodeRows):
                raise TypeError(f"{type(model).__name__}'s buffer cannot leave out a dropped episode; "
                                "build the learner with agents.learners.sb3_setup.build_model")
            info.pop("episode", None)
            info["left_out_transitions"] = buffer.drop_episode(
                env, starts_now=isinstance(buffer, RolloutBuffer) and bool(starts[env]))
            n += 1
    return n
