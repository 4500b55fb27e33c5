"""Stable-Baselines3 PPO and DQN as this project uses them: sized for environment steps that cost
seconds, with buffers that leave dropped episodes out, and saved without pickles.

What an agent folder holds for an SB3 learner (read back by ``agent_folder.Controller``):
  policy.safetensors      the policy network's weights (no pickle: safetensors is plain tensors)
  obs_normalization.json  VecNormalize's running mean / variance of the observation, as JSON
The checkpoint for ``--resume`` adds SB3's model zip (weights and optimizer state); it is read
back with ``set_parameters``, which loads only its tensors (``torch.load(weights_only=True)``),
never its pickled ``data`` entry. For DQN it also keeps the replay buffer, as plain arrays (SB3's
``save_replay_buffer`` pickles), so a resumed DQN samples from what it had collected, not from the
few transitions after the resume.
"""
from __future__ import annotations

import io
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agents.learners.dropped_episodes import DropAwareReplayBuffer, DropAwareRolloutBuffer
from trainers.atomic_files import write_bytes_atomic, write_json_atomic

POLICY_FILE = "policy.safetensors"
OBS_STATS_FILE = "obs_normalization.json"
DEFAULT_DECISIONS = {"ppo": 480, "dqn": 480, "qlearning": 480}


def action_mode_for(algo: str) -> str:
    return "box" if algo == "ppo" else "discrete"


def whole_rollouts(algo: str, n_envs: int, decisions: int) -> int:
    """The decisions a fresh PPO run will really take: PPO learns in whole rollouts of n_steps x
    n_envs decisions (n_steps itself sized from the total), so SB3 rounds a total up to the next
    whole one; said once, before the run, rather than found in agent.json later. Other learners,
    and a total of 0, are returned as they are."""
    if algo != "ppo" or decisions == 0:
        return decisions
    rounded = decisions
    for _ in range(8):  # the rollout is sized from the total it rounds: settle on a fixed point
        n_steps = learner_hparams(algo, n_envs, rounded)["n_steps"]
        again = -(-decisions // (n_steps * n_envs)) * (n_steps * n_envs)
        if again == rounded:
            break
        rounded = again
    if rounded != decisions:
        print(f"note: PPO learns in whole rollouts of {n_steps * n_envs} decisions here ({n_envs} environments x "
              f"{n_steps} steps): {decisions} decisions become {rounded}", file=sys.stderr)
    return rounded


def resumed_rollouts(algo: str, state: dict, n_envs: int, decisions: int) -> int:
    """Where a resumed run ends when asked for ``decisions`` in all: PPO goes on from its checkpoint
    (a rollout boundary: agents.learners.training_run.learned_decisions) in whole rollouts of its
    n_steps x ``n_envs``, so the total rounds up; said once, before the run."""
    start = int(state.get("num_timesteps", 0))
    if algo != "ppo" or decisions <= start:
        return max(decisions, start)
    rollout = int(state["learner_hparams"]["n_steps"]) * n_envs
    total = start + -(-(decisions - start) // rollout) * rollout
    if total != decisions:
        print(f"note: resuming at decision {start}; PPO learns in whole rollouts of {rollout} decisions here "
              f"({n_envs} environments x {rollout // n_envs} steps): {decisions} decisions become {total}",
              file=sys.stderr)
    return total


def learner_hparams(algo: str, n_envs: int, total: int, imitation: bool = False, control=None) -> dict[str, Any]:
    """Sized for expensive steps: updates every few dozen decisions, not thousands, but many
    gradient steps per rollout (minibatches of 16, 20 epochs: about 60 per 48 decisions, where
    10 epochs of one minibatch left the policy where it started). A policy warm-started by
    imitation learns more gently, so PPO refines it instead of erasing it. Under control
    (``control``, trainers.config.ControlConfig): with a residual base, exploration starts
    narrower (schedule actions fire above 0.5, about one decision in twelve at the start rather
    than one in five), and a paired reward is undiscounted (gamma 1, as LHOPT: the episode's
    return is then exactly its final advantage over the recipe)."""
    if algo == "ppo":
        n_steps = max(4, min(48, total) // n_envs)  # a rollout never outgrows the whole run
        batch = min(16, n_steps * n_envs)
        hp = {"n_steps": n_steps, "batch_size": batch, "n_epochs": 20, "learning_rate": 3e-4,
              "gamma": 0.95, "gae_lambda": 0.9, "ent_coef": 0.003, "clip_range": 0.2, "target_kl": 0.05,
              "policy_kwargs": {"net_arch": [64, 64], "log_std_init": -0.5}}
        if imitation:
            hp.update({"learning_rate": 1e-4, "ent_coef": 0.0, "n_epochs": 10})
        if control is not None and control.residual:
            hp["policy_kwargs"] = {**hp["policy_kwargs"], "log_std_init": -1.0}
        if control is not None and control.reward == "paired":
            hp.update({"gamma": 1.0, "gae_lambda": 0.95})
        return hp
    if algo == "dqn":
        return {"learning_starts": min(64, total // 4), "buffer_size": 20_000, "batch_size": 32, "train_freq": 1,
                "gradient_steps": 2, "target_update_interval": 50, "exploration_fraction": 0.5,
                "exploration_final_eps": 0.05, "learning_rate": 1e-3,
                # a paired reward is undiscounted for every learner, so all three learn the same return
                "gamma": 1.0 if control is not None and control.reward == "paired" else 0.95,
                "policy_kwargs": {"net_arch": [64, 64]}}
    from agents.learners.qlearning import QLearningConfig

    hp = asdict(QLearningConfig.for_features(control.features if control is not None else "basic"))
    if control is not None and control.reward == "paired":
        hp["gamma"] = 1.0
    return hp


def _algo_class(algo: str):
    from stable_baselines3 import DQN

    from agents.learners.dropped_episodes import DropAwarePPO

    return {"ppo": DropAwarePPO, "dqn": DQN}[algo]


def build_model(algo: str, venv, seed: int, hp: dict[str, Any]):
    """A new PPO or DQN on the (normalised) VecEnv, with drop-aware buffers."""
    buffer = {"rollout_buffer_class": DropAwareRolloutBuffer} if algo == "ppo" else {
        "replay_buffer_class": DropAwareReplayBuffer}
    return _algo_class(algo)("MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **buffer, **hp)


# ------------------------------------------------------------------ observation normalisation
@dataclass
class ObsNormalization:
    """VecNormalize's observation statistics, kept as JSON (VecNormalize itself pickles)."""

    mean: list[float]
    var: list[float]
    count: float
    clip_obs: float
    epsilon: float

    @classmethod
    def of(cls, vec_normalize) -> "ObsNormalization":
        rms = vec_normalize.obs_rms
        return cls(rms.mean.tolist(), rms.var.tolist(), float(rms.count), float(vec_normalize.clip_obs),
                   float(vec_normalize.epsilon))

    def apply_to(self, vec_normalize) -> None:
        vec_normalize.obs_rms.mean = np.asarray(self.mean, dtype=np.float64)
        vec_normalize.obs_rms.var = np.asarray(self.var, dtype=np.float64)
        vec_normalize.obs_rms.count = self.count

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """What VecNormalize.normalize_obs computes."""
        mean, var = np.asarray(self.mean), np.asarray(self.var)
        return np.clip((obs - mean) / np.sqrt(var + self.epsilon), -self.clip_obs, self.clip_obs).astype(np.float32)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path, size: Optional[int] = None) -> "ObsNormalization":
        """Statistics as saved, checked: numbers where numbers belong, finite, a variance that is
        not negative, and (given ``size``) one entry per observation feature."""
        from trainers.config import ConfigError, read_structured_file

        data = read_structured_file(path, "observation statistics file")
        try:
            stats = cls(**data)
            mean, var = np.asarray(stats.mean, dtype=np.float64), np.asarray(stats.var, dtype=np.float64)
            scalars = np.asarray([stats.count, stats.clip_obs, stats.epsilon], dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{path}: not observation statistics saved by this project ({err})") from None
        if mean.ndim != 1 or mean.shape != var.shape or (size is not None and len(mean) != size):
            want = f"{size}" if size is not None else "matching"
            raise ConfigError(f"{path}: mean has {mean.size} and var {var.size} entries; the observation has {want}")
        if not (np.isfinite(mean).all() and np.isfinite(var).all() and np.isfinite(scalars).all()):
            raise ConfigError(f"{path}: holds values that are not finite (NaN or infinity)")
        if (var < 0).any() or stats.clip_obs <= 0 or stats.epsilon < 0:
            raise ConfigError(f"{path}: a negative variance, or clip_obs/epsilon out of range")
        return stats


# ------------------------------------------------------------------ saving and loading
def save_policy(folder: Path, model, vec_normalize) -> dict[str, Any]:
    """The deployable part of an SB3 learner: policy weights and observation statistics."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    write_bytes_atomic(folder / POLICY_FILE, save(state))
    ObsNormalization.of(vec_normalize).save(folder / OBS_STATS_FILE)
    return {"model_file": POLICY_FILE, "obs_normalization": OBS_STATS_FILE,
            "policy_class": type(model.policy).__name__}


def save_checkpoint(folder: Path, model, vec_normalize, tag: str) -> dict[str, str]:
    """Everything --resume needs: SB3's zip (weights + optimizer), the observation statistics and
    (DQN) the replay buffer, under names tagged with the step, so the previous checkpoint stays
    whole until the caller's state file points at this one."""
    buf = io.BytesIO()
    model.save(buf)
    files = {"model": f"model-{tag}.zip", "obs_normalization": f"obs_normalization-{tag}.json"}
    write_bytes_atomic(folder / files["model"], buf.getvalue())
    ObsNormalization.of(vec_normalize).save(folder / files["obs_normalization"])
    if isinstance(getattr(model, "replay_buffer", None), DropAwareReplayBuffer):
        files["replay_buffer"] = f"replay_buffer-{tag}.npz"
        save_replay_buffer(folder / files["replay_buffer"], model.replay_buffer)
    return files


# what a replay buffer is: its transitions, which rows may be sampled, and where it writes next
_REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts", "valid")


def save_replay_buffer(path: Path, buffer: DropAwareReplayBuffer) -> None:
    """The filled rows of a DQN replay buffer as an .npz of plain arrays, written atomically."""
    upper = buffer.buffer_size if buffer.full else buffer.pos
    out = io.BytesIO()
    np.savez_compressed(out, **{k: getattr(buffer, k)[:upper] for k in _REPLAY_ARRAYS},
                        pos=np.int64(buffer.pos), full=np.bool_(buffer.full))
    write_bytes_atomic(path, out.getvalue())


def _read_replay_file(path: Path, buffer: DropAwareReplayBuffer) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The saved transitions that may be sampled, oldest first, each array (transitions, ...), and
    checked against ``buffer``: its observation and action shapes, finite numbers, actions the
    action space holds, 0/1 flags. Raises ValueError naming what is wrong."""
    from gymnasium import spaces

    with np.load(path, allow_pickle=False) as data:
        arrays = {k: np.asarray(data[k]) for k in _REPLAY_ARRAYS}
        pos, full = int(data["pos"]), bool(data["full"])
    valid = arrays["valid"]
    if valid.ndim != 2 or valid.dtype != np.bool_:
        raise ValueError(f"valid is {valid.dtype} of shape {valid.shape}, not a (rows, envs) mask")
    rows = valid.shape[0]
    if not ((not full and pos == rows) or (full and 0 <= pos < rows)):
        raise ValueError(f"write position {pos} (full={full}) does not fit {rows} rows")
    for name, value in arrays.items():
        want = getattr(buffer, name).shape[2:]
        if value.shape[:2] != valid.shape or value.shape[2:] != want or value.dtype.kind not in "biuf":
            raise ValueError(f"{name} is {value.dtype} of shape {value.shape}; this learner's buffer holds "
                             f"rows of {valid.shape[1]} envs x {want} numbers")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"{name} holds values that are not finite (NaN or infinity)")
    for flag in ("dones", "timeouts"):
        if not np.isin(arrays[flag], (0, 1)).all():
            raise ValueError(f"{flag} holds values other than 0 and 1")
    space = buffer.action_space
    if isinstance(space, spaces.Discrete):
        a = arrays["actions"]
        if (a != np.round(a)).any() or (a < space.start).any() or (a >= space.start + space.n).any():
            raise ValueError(f"actions holds values outside the action space ({space})")
    order = np.r_[pos:rows, 0:pos] if full else np.arange(rows)
    r, e = np.nonzero(valid[order])  # C order: oldest row first, env by env within a row
    return {k: v[order][r, e] for k, v in arrays.items() if k != "valid"}, r


def load_replay_buffer(path: Path, buffer: DropAwareReplayBuffer) -> int:
    """Fill ``buffer`` from save_replay_buffer's file (no pickles are read) and return how many
    transitions it took. The transitions that may be sampled are laid out again, oldest first, so a
    run resumed with another --n-envs or buffer size keeps them (the newest, if they do not fit);
    rows a dropped episode left out are left behind. Episodes in flight at the checkpoint are not
    continued: the resumed run starts new ones."""
    import zipfile
    import zlib

    from trainers.config import ConfigError

    try:
        moved, _ = _read_replay_file(path, buffer)
    except (OSError, KeyError, ValueError, TypeError, EOFError, NotImplementedError, zipfile.BadZipFile,
            zlib.error) as err:
        raise ConfigError(f"--resume: {path}: not a replay buffer this learner can continue from "
                          f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    n = len(moved["rewards"])
    keep = min(n, buffer.buffer_size * buffer.n_envs)
    at = np.arange(keep)
    rows, envs = at // buffer.n_envs, at % buffer.n_envs
    buffer._init_rows(buffer.buffer_size, buffer.n_envs, valid=False)  # no row sampled, no episode in flight
    for name, value in moved.items():
        getattr(buffer, name)[rows, envs] = value[n - keep:]
    buffer.valid[rows, envs] = True
    used = -(-keep // buffer.n_envs)
    buffer.pos, buffer.full = used % buffer.buffer_size, used == buffer.buffer_size
    return keep


def resume_model(algo: str, venv, seed: int, hp: dict[str, Any], zip_path: Path, num_timesteps: int,
                 replay_path: Optional[Path] = None):
    """A model built as build_model does, then given the checkpoint's tensors (no unpickling) and,
    for DQN, its replay buffer."""
    model = build_model(algo, venv, seed, hp)
    model.set_parameters(str(zip_path), exact_match=True, device="cpu")
    model.num_timesteps = num_timesteps
    if algo == "dqn":
        kept = load_replay_buffer(replay_path, model.replay_buffer) if replay_path is not None else 0
        if kept == 0:  # a checkpoint from before buffers were kept, or nothing in it may be sampled
            model.learning_starts = num_timesteps + int(hp["learning_starts"])
            print(f"note: the checkpoint holds no replay buffer to continue from; DQN collects "
                  f"{hp['learning_starts']} transitions again before it trains", file=sys.stderr)
    return model


def load_policy(folder: Path, meta: dict[str, Any], observation_space, action_space):
    """The policy network from an agent folder's safetensors file, for deterministic actions."""
    from safetensors.torch import load_file
    from stable_baselines3.dqn.policies import DQNPolicy
    from stable_baselines3.common.policies import ActorCriticPolicy

    from trainers.config import ConfigError

    classes = {"ppo": ActorCriticPolicy, "dqn": DQNPolicy}
    kwargs = meta.get("learner_hparams", {}).get("policy_kwargs", {})
    try:
        policy = classes[meta["algo"]](observation_space, action_space, lambda _: 0.0, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{folder / 'agent.json'}: learner_hparams.policy_kwargs {kwargs!r} do not build a "
                          f"{meta['algo']} policy ({err})") from None
    path = folder / meta["model_file"]
    try:
        weights = load_file(str(path))
        policy.load_state_dict(weights)
    except Exception as err:  # safetensors raises its own SafetensorError (a bare Exception subclass)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path}: not this agent's policy weights ({first})") from None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ConfigError(f"{path}: tensor {bad[0]} holds values that are not finite (NaN or infinity)")
    policy.set_training_mode(False)
    return policy
