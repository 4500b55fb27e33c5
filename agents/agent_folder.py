"""A saved agent is one folder: everything another machine needs to use it.

    results/agents/<name>/
      agent.json          what is here, how it was trained, how actions map to hyperparameters
      model.zip           SB3 policy (PPO/DQN)   | qtable.json (Q-learning)
      vecnormalize.pkl    observation-normalisation statistics (SB3 learners)
      env_config.yaml     the instance set and environment it was trained on
      training_curve.csv  episode returns during training (+ learning_curve.png)
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from envs.actions import ActionMap
from trainers.config import ConfigError, InstanceSetConfig, parse_config

AGENT_JSON = "agent.json"


def write_agent_json(folder: Path, meta: dict[str, Any]) -> None:
    (folder / AGENT_JSON).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def save_env_config(folder: Path, cfg: InstanceSetConfig) -> None:
    (folder / "env_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def read_agent_json(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / AGENT_JSON
    if not path.is_file():
        raise ConfigError(f"{folder}: not an agent folder (no {AGENT_JSON}); train one with python -m agents.train_agent")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


class Controller:
    """A trained policy, loaded from its folder, that maps an observation to an action."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta = read_agent_json(self.folder)
        self.algo: str = self.meta["algo"]
        cfg_path = self.folder / "env_config.yaml"
        self.env_config = parse_config(yaml.safe_load(cfg_path.read_text()), source=str(cfg_path))
        self._normalizer = None
        if self.algo == "qlearning":
            from agents.qlearning import QLearningAgent

            self._q = QLearningAgent.load(self.folder / self.meta["model_file"])
        elif self.algo in ("ppo", "dqn"):
            from stable_baselines3 import DQN, PPO

            cls = PPO if self.algo == "ppo" else DQN
            self._model = cls.load(self.folder / self.meta["model_file"], device="cpu")
            if self.meta.get("vecnormalize"):
                with open(self.folder / self.meta["vecnormalize"], "rb") as fh:
                    self._normalizer = pickle.load(fh)  # SB3 VecNormalize without its venv
                self._normalizer.training = False
        else:
            raise ConfigError(f"{self.folder / AGENT_JSON}: field 'algo' is {self.algo!r}; expected ppo, dqn or qlearning")

    @property
    def action_mode(self) -> str:
        return self.meta["action_map"]["mode"]

    def check_compatible(self, action_map: ActionMap) -> None:
        """An agent only makes sense with the action mapping it was trained on."""
        mine, theirs = self.meta["action_map"], action_map.describe()
        for key in ("mode", "hparams", "max_log2_step", "menu"):
            if mine[key] != theirs[key]:
                raise ConfigError(f"{self.folder / AGENT_JSON}: action_map.{key} is {mine[key]!r} but the "
                                  f"environment uses {theirs[key]!r}")

    def act(self, obs: np.ndarray):
        if self.algo == "qlearning":
            return self._q.predict(obs, deterministic=True)
        o = np.asarray(obs, dtype=np.float32)[None]
        if self._normalizer is not None:
            o = self._normalizer.normalize_obs(o)
        action, _ = self._model.predict(o, deterministic=True)
        return action[0]

