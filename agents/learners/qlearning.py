"""Tabular Q-learning over a discretised observation: the simplest learner, a yardstick for PPO/DQN.

    Q(s, a) <- Q(s, a) + alpha * [r + gamma * max_a' Q(s', a') - Q(s, a)]

It drives any SB3 VecEnv (so the same Ray-backed parallel environments serve it), with
epsilon-greedy exploration that decays linearly over training. A step whose worker died
(``info["dropped"]``) is not learned from; the episode's earlier updates were real transitions and
stand (online TD updates cannot be taken back).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from envs.features import FEATURE_NAMES
from trainers.atomic_files import write_json_atomic
from trainers.config import ConfigError


@dataclass
class QLearningConfig:
    alpha: float = 0.3  # learning rate of the table
    gamma: float = 0.95  # discount
    epsilon_start: float = 1.0  # exploration at the first step
    epsilon_end: float = 0.1  # exploration after epsilon_decay_fraction of training
    epsilon_decay_fraction: float = 0.6
    # feature -> bin edges; the state is the tuple of bin indices
    bins: dict[str, list[float]] = field(default_factory=lambda: {
        "progress": [0.34, 0.67],
        "lr_pos": [-0.6, -0.2, 0.2, 0.6],
        "train_loss_slope": [-0.02, 0.0],
        "last_eval_change": [0.0, 0.01],
    })

    @classmethod
    def for_features(cls, kind: str) -> "QLearningConfig":
        """Bins over the observation a ``control.features`` kind builds: for the scale-free one,
        where the run stands, the controller's own lr correction, the adapter, and the two signals
        of an lr too high or too low (the loss trend's certainty, the updates' agreement). The
        anchored one bins the lr's distance from the recipe in place of the correction."""
        if kind not in ("scale_free", "scale_free_anchored"):
            return cls()
        lr = "lr_vs_recipe_log2" if kind == "scale_free_anchored" else "lr_scale_log2"
        return cls(bins={"progress": [0.34, 0.67], lr: [-2.0, -0.5, 0.5, 2.0], "ctx_lora": [0.5],
                         "train_loss_slope_t": [-2.0, 0.0], "update_cosine": [0.0, 0.5], "cooldown_started": [0.5]})


class QLearningAgent:
    """A Q-table keyed by discretised observations; unseen states start at zero."""

    def __init__(self, n_actions: int, cfg: QLearningConfig = QLearningConfig(), seed: int = 0,
                 features: tuple[str, ...] = FEATURE_NAMES) -> None:
        unknown = set(cfg.bins) - set(features)
        if unknown:
            raise ValueError(f"qlearning bins name unknown features {sorted(unknown)}; known: {features}")
        self.n_actions = int(n_actions)  # gymnasium gives numpy ints; the table is saved as JSON
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.q: dict[tuple[int, ...], np.ndarray] = {}
        self._idx = [features.index(f) for f in cfg.bins]
        self._edges = [np.asarray(e, dtype=np.float64) for e in cfg.bins.values()]
        self.num_timesteps = 0

    def state(self, obs: np.ndarray) -> tuple[int, ...]:
        obs = np.asarray(obs).reshape(-1)
        return tuple(int(np.searchsorted(e, obs[i], side="right")) for i, e in zip(self._idx, self._edges))

    def values(self, s: tuple[int, ...]) -> np.ndarray:
        if s not in self.q:
            self.q[s] = np.zeros(self.n_actions)
        return self.q[s]

    def predict(self, obs: np.ndarray, deterministic: bool = True, epsilon: float = 0.0) -> int:
        if not deterministic and self.rng.random() < epsilon:
            return int(self.rng.integers(self.n_actions))
        v = self.values(self.state(obs))
        best = np.flatnonzero(v == v.max())
        return int(best[0] if deterministic else self.rng.choice(best))

    def update(self, obs, action: int, reward: float, next_obs, done: bool) -> float:
        """One temporal-difference update; returns the TD error."""
        q = self.values(self.state(obs))
        target = reward if done else reward + self.cfg.gamma * float(self.values(self.state(next_obs)).max())
        td = target - q[action]
        q[action] += self.cfg.alpha * td
        return float(td)

    def epsilon(self, step: int, total: int) -> float:
        frac = min(step / max(self.cfg.epsilon_decay_fraction * total, 1), 1.0)
        return self.cfg.epsilon_start + frac * (self.cfg.epsilon_end - self.cfg.epsilon_start)

    def learn(self, vec_env, total_timesteps: int,
              on_step: Optional[Callable[[int, np.ndarray, list[dict]], bool]] = None) -> "QLearningAgent":
        """Epsilon-greedy experience from every sub-environment of a VecEnv. on_step(step, rewards,
        infos) may return False to stop early (checkpoints, progress, MLflow use it)."""
        obs = vec_env.reset()
        start = self.num_timesteps
        while self.num_timesteps - start < total_timesteps:
            eps = self.epsilon(self.num_timesteps - start, total_timesteps)
            actions = np.array([self.predict(o, deterministic=False, epsilon=eps) for o in obs])
            next_obs, rewards, dones, infos = vec_env.step(actions)
            for i in range(len(actions)):
                if "dropped" in infos[i]:  # the worker died mid-step: no reward, no next state to learn from
                    infos[i].pop("episode", None)
                    infos[i]["left_out_transitions"] = 1
                    continue
                nxt = infos[i].get("terminal_observation", next_obs[i]) if dones[i] else next_obs[i]
                self.update(obs[i], int(actions[i]), float(rewards[i]), nxt, bool(dones[i]))
            obs = next_obs
            self.num_timesteps += len(actions)
            if on_step is not None and on_step(self.num_timesteps, rewards, infos) is False:
                break
        return self

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        data = {
            "n_actions": self.n_actions,
            "config": asdict(self.cfg),
            "num_timesteps": self.num_timesteps,
            "q": [[list(k), v.tolist()] for k, v in self.q.items()],
        }
        write_json_atomic(path, data, indent=None)

    @classmethod
    def load(cls, path: str | Path, features: tuple[str, ...] = FEATURE_NAMES,
             n_actions: Optional[int] = None) -> "QLearningAgent":
        """A saved table, checked: read with the project's caps (size, nesting), one finite value
        per action in every row, states of one bin index per binned feature, and (given
        ``n_actions``) as many actions as the environment's menu."""
        from trainers.config import read_structured_file

        data = read_structured_file(Path(path), "Q-table")
        try:
            agent = cls(data["n_actions"], QLearningConfig(**data["config"]), features=tuple(features))
            agent.num_timesteps = int(data["num_timesteps"])
            agent.q = {tuple(int(i) for i in k): np.asarray(v, dtype=np.float64) for k, v in data["q"]}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"{path}: not a Q-table saved by this project ({type(err).__name__}: {err})") from None
        if n_actions is not None and agent.n_actions != n_actions:
            raise ConfigError(f"{path}: n_actions is {agent.n_actions}; the environment's menu has {n_actions}")
        for state, values in agent.q.items():
            if values.shape != (agent.n_actions,) or not np.isfinite(values).all() or len(state) != len(agent._idx):
                raise ConfigError(f"{path}: the row of state {list(state)} must hold {agent.n_actions} finite values "
                                  f"for a state of {len(agent._idx)} bins")
        return agent
