"""A saved agent is one folder: everything another machine needs to use it, and nothing pickled.

    results/agents/<name>/
      agent.json              what is here, how it was trained, how actions map to hyperparameters
      policy.safetensors      SB3 policy weights (PPO/DQN)   | qtable.json (Q-learning)
      obs_normalization.json  observation-normalisation statistics (SB3 learners)
      env_config.yaml         the instance set and environment it was trained on
      training_curve.csv      episode returns during training (+ learning_curve.png)
      checkpoint/             what --resume continues from (SB3's model.zip holds the optimizer
                              state; it is read with set_parameters, tensors only)

Loading a folder reads JSON, YAML, safetensors and CSV only. An SB3 model zip from elsewhere
can carry pickled objects: load one only from a source you trust.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from trainers.atomic_files import write_json_atomic, write_text_atomic
from trainers.config import ConfigError, InstanceSetConfig, parse_config, read_structured_file

AGENT_JSON = "agent.json"
STATE_FILE = "state.json"  # checkpoint/state.json: what --resume continues from
ALGOS = ("ppo", "dqn", "qlearning")


def is_agent_folder(folder: Path) -> bool:
    return (folder / AGENT_JSON).is_file()


RUN_MARKER = ".training-run"  # written when a run starts in a folder; with no checkpoint yet, nothing was learned
CHECKPOINT_FILES = {"ppo": ("model", "obs_normalization"), "dqn": ("model", "obs_normalization"),
                    "qlearning": ("qtable",)}
# checked like the others where a checkpoint has one (DQN's replay buffer: checkpoints before it had none)
OPTIONAL_CHECKPOINT_FILES = {"dqn": ("replay_buffer",)}


def stopped_before_checkpoint(folder: Path) -> bool:
    """A folder a run started in and left before it learned anything (killed before its first
    checkpoint, or stopped before its first decision): a new run may clear it."""
    return (folder / RUN_MARKER).is_file() and not is_agent_folder(folder) and not learned_anything(folder)


def check_agent_folder(folder: Path, resume: bool, algo: str, imitate: bool = False) -> None:
    """Refuse anything that would touch a folder that is not a training run's to touch: a folder
    another run is writing; a resume needs a whole checkpoint of the same learner; a new run needs
    an empty folder, a finished agent, or one a run left before its first checkpoint."""
    from trainers.atomic_files import lock_holder

    holder = lock_holder(folder)
    if holder:
        raise ConfigError(f"{folder}: another training run ({holder}) is writing this agent folder; wait for it "
                          "to end, or choose another --name")
    state = folder / "checkpoint" / STATE_FILE
    if resume:
        if not state.is_file():
            why = (" (a run started here and stopped before its first checkpoint: rerun without --resume, which "
                   "clears it)" if stopped_before_checkpoint(folder) else "")
            raise ConfigError(f"--resume: {state} not found; nothing to resume{why}")
        saved = read_structured_file(state)
        if not isinstance(saved, dict) or saved.get("algo") != algo or not isinstance(saved.get("files"), dict):
            got = saved.get("algo") if isinstance(saved, dict) else None
            raise ConfigError(f"--resume: {state} is a checkpoint of --algo {got}, not {algo}"
                              if got else f"--resume: {state} is not a checkpoint this version can continue")
        check_checkpoint_files(folder / "checkpoint", saved, algo)
        if imitate and not saved.get("imitation") and int(saved.get("num_timesteps", 0)) > 0:
            raise ConfigError(f"--imitate: {state} has learned {saved['num_timesteps']} decisions without imitation; "
                              "a warm start now would overwrite them (resume without --imitate)")
        return
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ConfigError(f"{folder}: exists and is not a folder; choose another --name")
    if folder.is_dir() and any(folder.iterdir()) and not is_agent_folder(folder) and not stopped_before_checkpoint(folder):
        if state.is_file():
            raise ConfigError(f"{folder}: holds an unfinished training run; continue it with --resume, "
                              "or choose another --name")
        raise ConfigError(f"{folder}: exists and is not an agent folder (no agent.json); "
                          "choose another --name or --out")


def check_checkpoint_files(ckpt: Path, saved: dict[str, Any], algo: str) -> None:
    """Every file a checkpoint's state.json points at: named, inside the checkpoint folder, there,
    and (SB3's zip) whole, so that --resume fails here and not deep inside the learner."""
    import zipfile
    import zlib

    where = ckpt / STATE_FILE
    if not isinstance(saved.get("num_timesteps"), int) or saved["num_timesteps"] < 0:
        raise ConfigError(f"--resume: {where}: field 'num_timesteps' must be a count of decisions, "
                          f"got {json.dumps(saved.get('num_timesteps'))}")
    optional = [k for k in OPTIONAL_CHECKPOINT_FILES.get(algo, ()) if k in saved["files"]]
    for key in [*CHECKPOINT_FILES[algo], *optional]:
        if key not in saved["files"]:
            raise ConfigError(f"--resume: {where}: files.{key} is missing; the checkpoint is incomplete")
        path = inside_folder(ckpt, saved["files"][key], f"--resume: {where}: files.{key}")
        if not path.is_file():
            raise ConfigError(f"--resume: {path} (files.{key} of {where}) is missing; the checkpoint is incomplete")
        if path.suffix in (".zip", ".npz"):  # SB3's model; DQN's replay buffer (numpy's .npz is a zip)
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
            except (zipfile.BadZipFile, OSError, zlib.error, NotImplementedError) as err:
                raise ConfigError(f"--resume: {path}: not a whole zip ({err}); the checkpoint is damaged") from None
            if bad is not None:
                raise ConfigError(f"--resume: {path}: member {bad} is damaged; the checkpoint is damaged")


def learned_anything(folder: Path) -> bool:
    """Whether a folder's checkpoint holds learning worth keeping: decisions, or an imitation warm start."""
    try:
        saved = read_structured_file(folder / "checkpoint" / STATE_FILE)
        return int(saved["num_timesteps"]) > 0 or bool(saved.get("imitation"))
    except (ConfigError, KeyError, TypeError, ValueError):
        return False


@contextmanager
def replacing(folder: Path, resume: bool) -> Iterator[None]:
    """A new run into a folder that holds a finished agent: the earlier agent waits aside until the
    body (the training) finishes, then goes; if the body fails before the new run learned anything,
    the earlier agent comes back."""
    previous = None
    waiting = folder.with_name(f".{folder.name}.previous")  # a finished agent a killed run was replacing
    if not resume and folder.exists() and any(folder.iterdir()):
        if stopped_before_checkpoint(folder):
            shutil.rmtree(folder)
            print(f"clearing {folder}: a run started there and stopped before its first checkpoint, so it holds "
                  "nothing learned", file=sys.stderr)
        else:
            if waiting.exists():  # older than the finished agent in the folder
                shutil.rmtree(waiting)
            folder.rename(waiting)
            print(f"replacing the earlier agent in {folder} (--name keeps both, --resume continues it); until this "
                  f"run has saved its agent the earlier one waits in {waiting}", file=sys.stderr)
    if not resume and waiting.exists() and is_agent_folder(waiting):
        previous = waiting
    try:
        yield
    except BaseException:
        if previous is not None and not learned_anything(folder):
            shutil.rmtree(folder, ignore_errors=True)  # the new run learned nothing worth keeping
            previous.rename(folder)
            print(f"the earlier agent is back in {folder}", file=sys.stderr)
        raise
    if previous is not None:
        shutil.rmtree(previous)


def write_agent_json(folder: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(folder / AGENT_JSON, meta)


def save_env_config(folder: Path, cfg: InstanceSetConfig) -> None:
    write_text_atomic(folder / "env_config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def read_agent_json(folder: str | Path) -> dict[str, Any]:
    """``agent.json``, checked field by field for what the loaders read from it, so that a damaged
    or hand-edited folder is refused with the field's name rather than deep inside torch."""
    folder = Path(folder)
    path = folder / AGENT_JSON
    if not path.is_file():
        raise ConfigError(f"{folder}: not an agent folder (no {AGENT_JSON}); train one with python -m agents.train_agent")
    inside_folder(folder, AGENT_JSON, f"{folder}: {AGENT_JSON}")  # not a symlink out of the folder
    meta = read_structured_file(path)
    if not isinstance(meta, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    for key in ("algo", "model_file", "action_map"):
        if key not in meta:
            raise ConfigError(f"{path}: field {key!r} is missing")
    if meta["algo"] not in ALGOS:
        raise ConfigError(f"{path}: field 'algo' is {meta['algo']!r}; expected one of {list(ALGOS)}")
    inside_folder(folder, meta["model_file"], f"{path}: field 'model_file'")
    if meta.get("obs_normalization") is not None:
        inside_folder(folder, meta["obs_normalization"], f"{path}: field 'obs_normalization'")
    _check_shape(path, "action_map", meta["action_map"], dict)
    for key, kind in (("mode", str), ("hparams", list)):
        _check_shape(path, f"action_map.{key}", meta["action_map"].get(key), kind)
    if "observation" in meta:
        _check_shape(path, "observation", meta["observation"], list)
        if not all(isinstance(x, str) for x in meta["observation"]):
            raise ConfigError(f"{path}: field 'observation' must list feature names (strings)")
    hp = meta.setdefault("learner_hparams", {})
    _check_shape(path, "learner_hparams", hp, dict)
    _check_shape(path, "learner_hparams.policy_kwargs", hp.setdefault("policy_kwargs", {}), dict)
    return meta


def _check_shape(path: Path, field: str, value: Any, kind: type) -> None:
    names = {dict: "an object", list: "a list", str: "a string"}
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: field {field!r} must be {names[kind]}, got {json.dumps(value)[:60]}")


def inside_folder(folder: Path, name: Any, what: str) -> Path:
    """A file an agent folder names, read only from inside that folder: a plain file name, no
    absolute path, no '..', no symlink out."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError(f"{what} must be a file name inside the agent folder, got {json.dumps(name)[:60]}")
    target = folder / name
    if target.is_symlink():
        raise ConfigError(f"{what}: {target} is a symlink; an agent folder is read only from inside itself")
    return target


class Controller:
    """A trained policy, loaded from its folder, that maps an observation to an action."""

    def __init__(self, folder: str | Path) -> None:
        from envs.control import action_map_for
        from envs.features import feature_names

        self.folder = Path(folder)
        self.meta = read_agent_json(self.folder)
        self.algo: str = self.meta["algo"]
        cfg_path = inside_folder(self.folder, "env_config.yaml", f"{self.folder}: env_config.yaml")
        self.env_config = parse_config(read_structured_file(cfg_path, "file (the agent folder is incomplete)"),
                                       source=str(cfg_path))
        names = list(feature_names(self.env_config.control.features))
        self.feature_names = names
        if list(self.meta.get("observation", names)) != names:
            raise ConfigError(f"{self.folder / AGENT_JSON}: trained on observation features "
                              f"{self.meta['observation']}, this code builds {names}")
        model_path = self.folder / self.meta["model_file"]
        if not model_path.is_file():
            raise ConfigError(f"{model_path}: missing; the agent folder is incomplete")
        self._normalizer = None
        if self.algo == "qlearning":
            from agents.learners.qlearning import QLearningAgent

            self._q = QLearningAgent.load(model_path, tuple(names), action_map_for(self.env_config).space.n)
        else:
            from gymnasium import spaces

            from agents.learners.sb3_setup import ObsNormalization, load_policy
            from envs.features import OBS_HIGH, OBS_LOW

            obs_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(len(names),), dtype=np.float32)
            self._policy = load_policy(self.folder, self.meta, obs_space, action_map_for(self.env_config).space)
            if self.meta.get("obs_normalization"):
                self._normalizer = ObsNormalization.load(self.folder / self.meta["obs_normalization"], len(names))

    @property
    def action_mode(self) -> str:
        return self.meta["action_map"]["mode"]

    def fingerprint(self) -> str:
        """A hash of what decides the actions (weights, statistics, action mapping): results keyed
        on it are recomputed when the agent is trained further."""
        h = hashlib.sha256()
        for name in (self.meta["model_file"], self.meta.get("obs_normalization")):
            if name:
                h.update((self.folder / name).read_bytes())
        h.update(json.dumps(self.meta["action_map"], sort_keys=True).encode())
        return h.hexdigest()[:16]

    @property
    def controlled(self) -> bool:
        """Whether it was trained under control (envs/control.py): residual, schedule actions, new
        features or the paired reward."""
        return self.env_config.control.enabled

    def check_compatible(self, action_map) -> None:
        """An agent only makes sense with the action mapping it was trained on (an
        ``envs.actions.ActionMap`` or ``envs.control.ControlActions``)."""
        mine, theirs = self.meta["action_map"], action_map.describe()
        for key in ("mode", "hparams", "max_log2_step", "menu", "control"):
            if mine.get(key) != theirs.get(key):
                raise ConfigError(f"{self.folder / AGENT_JSON}: action_map.{key} is {mine.get(key)!r} but the "
                                  f"environment uses {theirs.get(key)!r}")

    def act(self, obs: np.ndarray):
        if self.algo == "qlearning":
            return self._q.predict(obs, deterministic=True)
        o = np.asarray(obs, dtype=np.float32)[None]
        if self._normalizer is not None:
            o = self._normalizer.normalize(o)
        action, _ = self._policy.predict(o, deterministic=True)
        return action[0]
