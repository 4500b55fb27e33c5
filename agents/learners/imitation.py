"""Warm-starting PPO by imitating search results on the training instances (or, for a residual
controller that observes where it stands on its recipe, ``--imitate recipe``: the expert returns the
lr to the recipe's, and holds everything else; or ``--imitate <residual probe>``: the expert moves
the lr to the recipe's times each training instance's smoothed best fixed correction in that probe).

A learning-rate search (``python -m agents.headroom --lr-grid``) finds, for every training
instance, the constant learning rate with the best validation loss. The "expert" here moves the
learning rate toward that instance's best one, as fast as the action allows, and holds weight decay
and clipping. Before PPO learns, the environments run a few episodes under the expert with
exploration noise (so the states cover starts far from the target), and the policy's mean action
is fitted to the expert's clean action at every visited state; its value head is fitted to the
returns those episodes earned. PPO then learns from there, on the reward alone.

The expert knows the instance; the policy does not (it sees only the observation), so what it can
imitate is how the learning rate should move given what the run shows. Held-out instances are
never used: only instances whose search result is marked ``split: train``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.features import FEATURE_NAMES, feature_names, is_scale_free
from trainers.config import ConfigError, InstanceSetConfig, load_config, read_structured_file

LR_FEATURE = FEATURE_NAMES.index("lr_pos")


RECIPE = "recipe"  # --imitate recipe: the expert returns the lr to the base recipe's


def expert_targets(path: Path, cfg: InstanceSetConfig) -> dict[str, float]:
    """instance -> the lr the expert moves toward, for every training instance of cfg: the best
    constant lr of an lr-grid result, or (``--imitate recipe``) the base recipe's own lr, for a
    residual controller that observes where it stands on its recipe."""
    anchored = cfg.control.features == "scale_free_anchored"
    if str(path) == RECIPE:
        if not anchored:
            raise ConfigError(f"--imitate recipe: the expert returns to the recipe from where the run stands on it, "
                              f"which only control.features: scale_free_anchored observes ({cfg.name} has "
                              f"{cfg.control.features!r})")
        return {inst.name: cfg.base_recipe.lr for inst in cfg.train}
    if anchored:  # a grid's best constant lr is not a peak on the recipe's warmup and decay; a probe's correction is
        return probe_targets(Path(path), cfg)
    if is_scale_free(cfg.control.features):
        raise ConfigError(f"--imitate: the expert reads the lr in force from the observation, which {cfg.name}'s "
                          "scale-free observation does not hold; imitation is not built for it")
    data = read_structured_file(Path(path))
    insts = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(insts, dict):
        raise ConfigError(f"{path}: not an lr-grid result (no 'instances'; make one with "
                          "python -m agents.headroom --config <name> --lr-grid)")
    if data.get("config") not in (None, cfg.name):
        raise ConfigError(f"{path}: config: an lr grid of instance set {data.get('config')!r}, not {cfg.name!r}")
    targets: dict[str, float] = {}
    for inst in cfg.train:
        rec = insts.get(inst.name)
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}: no result for training instance {inst.name!r}")
        if rec.get("split") != "train":
            raise ConfigError(f"{path}: instance {inst.name!r} is marked split {rec.get('split')!r}, not 'train'; "
                              "imitation learns only from training instances")
        lr = rec.get("best_lr_refined", rec.get("best_lr_grid"))
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"{path}: instances.{inst.name}.best_lr_refined: not a positive number ({lr!r})")
        targets[inst.name] = float(lr)
    return targets


def probe_targets(path: Path, cfg: InstanceSetConfig) -> dict[str, float]:
    """instance -> the recipe's lr x 2**target, the target being each training instance's smoothed
    best correction in a residual probe (``python -m agents.headroom --residual-probe --every 1``;
    agents/experiments/residual_probe.py smoothed_target): 0, the recipe itself, where none beat it."""
    data = read_structured_file(path)
    summary = data.get("summary") if isinstance(data, dict) else None
    per = summary.get("per_instance") if isinstance(summary, dict) else None
    if not isinstance(per, dict) or "probe_log2" not in data:
        raise ConfigError(f"--imitate {path}: {cfg.name} corrects a recipe's schedule: imitate 'recipe' or a residual "
                          "probe (python -m agents.headroom --config <name> --residual-probe --every 1), not an lr grid")
    if not probed_the_same_runs(data.get("config"), cfg) or \
            data.get("base_recipe") != cfg.base_recipe.model_dump(mode="json"):
        raise ConfigError(f"--imitate {path}: a probe of {data.get('config')!r} around another recipe than {cfg.name}'s "
                          "(config, base_recipe)")
    targets: dict[str, float] = {}
    for inst in cfg.train:
        rec = per.get(inst.name)
        if not isinstance(rec, dict):
            raise ConfigError(f"{path}: summary.per_instance: no result for training instance {inst.name!r} "
                              "(probe every one: --every 1)")
        k = rec.get("target_log2")
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or abs(k) > 8:
            raise ConfigError(f"{path}: summary.per_instance.{inst.name}.target_log2: not a correction ({k!r})")
        targets[inst.name] = cfg.base_recipe.lr * 2.0 ** float(k)
    return targets


# What a residual probe's runs do not depend on: it sets the recipe's lr x 2**k at the first decision
# and holds it (agents/experiments/residual_probe.py), so what the controller observes, how it is
# rewarded, whether it has schedule actions, and how its training episodes start play no part.
PROBE_FREE_CONTROL = ("features", "reward", "schedule_actions", "user_guess_fraction", "reference_seeds")


def probed_the_same_runs(probe_config: Any, cfg: InstanceSetConfig) -> bool:
    """Whether a probe made on config ``probe_config`` ran what ``cfg`` would run: the same config,
    or one (an ablation) that differs from it only in PROBE_FREE_CONTROL and its name."""
    if probe_config == cfg.name:
        return True
    try:
        other = load_config(str(probe_config))
    except ConfigError:  # not a config this checkout has: only the same name is known to match
        return False

    def probed(c: InstanceSetConfig) -> dict[str, Any]:
        d = c.model_dump(mode="json")
        d.pop("name")
        d["control"] = {k: v for k, v in d["control"].items() if k not in PROBE_FREE_CONTROL}
        return d

    return probed(other) == probed(cfg)


def check_warm_start(path: Path, cfg: InstanceSetConfig, algo: str, on_ray: bool) -> None:
    """What --imitate needs, checked before anything is written: PPO, a backend whose resets name
    the instance, and a readable lr-grid result for every training instance."""
    if algo != "ppo":
        raise ConfigError(f"--imitate warm-starts PPO's policy; --algo {algo} has none to warm-start")
    if on_ray:
        raise ConfigError("--imitate runs on the in-process or --subproc backend, not --ray")
    expert_targets(path, cfg)


def lr_from_obs(raw_obs: np.ndarray, cfg: InstanceSetConfig) -> np.ndarray:
    """The current lr of each observation, decoded from its lr_pos feature (a log position in the
    hard bounds)."""
    lo, hi = (math.log(b) for b in cfg.bounds.lr)
    pos = np.asarray(raw_obs, dtype=np.float64)[..., feature_names(cfg.control.features).index("lr_pos")]
    return np.exp(lo + (pos + 1.0) / 2.0 * (hi - lo))


def expert_action(raw_obs: np.ndarray, target_lr: np.ndarray, cfg: InstanceSetConfig) -> np.ndarray:
    """Box actions: the lr entry moves toward the target (a full step is 2**max_log2_step), the
    others hold."""
    from envs.control import action_map_for

    raw = np.asarray(raw_obs, dtype=np.float64)
    width = getattr(action_map_for(cfg), "width", 3)
    a = np.zeros((len(raw), width), dtype=np.float32)
    step = cfg.control.lr_log2_step if cfg.control.enabled else cfg.action.max_log2_step
    if cfg.control.features == "scale_free_anchored":  # the peak lr now: the recipe's, times the run's scale
        at = feature_names(cfg.control.features).index("lr_vs_recipe_log2")
        now = np.log2(cfg.base_recipe.lr) + raw[..., at]
        a[:, 0] = np.clip((np.log2(target_lr) - now) / step, -1.0, 1.0)
    else:
        a[:, 0] = np.clip(np.log2(target_lr / lr_from_obs(raw, cfg)) / step, -1.0, 1.0)
    return a


@dataclass
class Demonstrations:
    raw_obs: np.ndarray  # (n, features), before VecNormalize
    actions: np.ndarray  # (n, 3), the expert's clean actions
    returns: np.ndarray  # (n,), discounted return from each state under the (noisy) expert
    instances: list[str]
    episodes: int


def collect(venv, targets: dict[str, float], cfg: InstanceSetConfig, episodes: int, noise: float,
            gamma: float, seed: int, on_step=None) -> Demonstrations:
    """Run ``episodes`` episodes in the (VecNormalize-wrapped) VecEnv under the noisy expert. The
    noise goes on every action entry, schedule actions too (a cooldown or rollback then fires in
    some episodes): the states cover runs the expert would not make, and the labels stay the clean
    expert's; the value head learns the noisy expert's returns, which PPO refits.
    ``on_step(n_envs, infos)`` sees every step (a progress bar, dropped episodes)."""
    rng = np.random.default_rng(seed)
    obs = venv.reset()
    raw = venv.get_original_obs()
    inner = venv.unwrapped  # the wrappers keep their own (empty) reset_infos
    current = [info.get("instance") for info in getattr(inner, "reset_infos", [{}] * venv.num_envs)]
    if any(c is None for c in current):
        raise ConfigError("--imitate needs the in-process or subprocess backend (their resets report the instance)")
    paths: list[list[tuple[np.ndarray, np.ndarray, float, str]]] = [[] for _ in range(venv.num_envs)]
    done_eps: list[list[tuple[np.ndarray, np.ndarray, float, str]]] = []
    while len(done_eps) < episodes:
        unknown = [c for c in current if c not in targets]
        if unknown:
            raise ConfigError(f"no imitation target for instance {unknown[0]!r}")
        clean = expert_action(raw, np.array([targets[c] for c in current]), cfg)
        noisy = np.clip(clean + rng.normal(0.0, noise, clean.shape), -1.0, 1.0).astype(np.float32)
        obs, rewards, dones, infos = venv.step(noisy)
        if on_step is not None:
            on_step(venv.num_envs, infos)
        for i in range(venv.num_envs):
            paths[i].append((raw[i].copy(), clean[i], float(rewards[i]), current[i]))
            if dones[i]:
                if "dropped" not in infos[i]:  # a worker that died mid-episode: nothing invented is learned from
                    done_eps.append(paths[i])
                paths[i] = []
                current[i] = inner.reset_infos[i].get("instance")
            else:
                current[i] = infos[i]["instance"]
        raw = venv.get_original_obs()
    kept = done_eps[:episodes]
    rets: list[float] = []
    for ep in kept:  # discounted return from each state, from 0 at the episode's end
        g, back = 0.0, []
        for _, _, r, _ in reversed(ep):
            g = r + gamma * g
            back.append(g)
        rets += back[::-1]
    steps = [t for ep in kept for t in ep]
    return Demonstrations(np.array([t[0] for t in steps], dtype=np.float32),
                          np.array([t[1] for t in steps], dtype=np.float32),
                          np.array(rets, dtype=np.float32), [t[3] for t in steps], len(kept))


def pretrain(model, demos: Demonstrations, normalize, epochs: int = 300, lr: float = 1e-3,
             log_std: float = math.log(0.35), seed: int = 0) -> dict[str, Any]:
    """Fit the PPO policy's mean action to the expert's and its value head to the returns (MSE,
    Adam, full batches), then set the exploration scale PPO starts from."""
    import torch

    torch.manual_seed(seed)
    policy = model.policy
    x = torch.as_tensor(normalize(demos.raw_obs), dtype=torch.float32)
    y = torch.as_tensor(demos.actions, dtype=torch.float32)
    ret = torch.as_tensor(demos.returns, dtype=torch.float32)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    policy.set_training_mode(True)
    first = None
    for _ in range(epochs):
        dist = policy.get_distribution(x)
        action_loss = torch.mean((dist.distribution.mean - y) ** 2)
        value_loss = torch.mean((policy.predict_values(x).flatten() - ret) ** 2)
        loss = action_loss + 0.5 * value_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first is None:
            first = (action_loss.item(), value_loss.item())
    policy.set_training_mode(False)
    with torch.no_grad():
        policy.log_std.fill_(log_std)
        mean = policy.get_distribution(x).distribution.mean
        final_action = float(torch.mean((mean - y) ** 2))
        final_value = float(torch.mean((policy.predict_values(x).flatten() - ret) ** 2))
    return {"transitions": len(y), "episodes": demos.episodes, "epochs": epochs,
            "action_mse_before": first[0], "action_mse_after": final_action,
            "value_mse_before": first[1], "value_mse_after": final_value, "log_std": log_std}
