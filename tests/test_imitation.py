"""PPO warm-started by imitating an lr search: the expert, the fit, and a trained controller that
moves a low start up and a high start down on held-out instances."""
import json
import math

import numpy as np
import pytest
import yaml

from agents import train_agent
from agents.learners import imitation
from agents.learners.agent_folder import Controller
from envs.features import observe
from envs.finetune_env import FineTuneEnv
from trainers.config import ConfigError, parse_config
from trainers.session import Hparams


@pytest.fixture(scope="module")
def cfg_dict(fast_cfg_dict):
    return dict(fast_cfg_dict, train=fast_cfg_dict["train"][:2], heldout=fast_cfg_dict["heldout"][:1])


def _grid(cfg, lr=1e-3, split="train"):
    return {"instances": {i["name"]: {"split": split, "best_lr_refined": lr} for i in cfg["train"]}}


def test_expert_targets_only_from_training_instances(cfg_dict, tmp_path):
    cfg = parse_config(cfg_dict)
    p = tmp_path / "grid.json"
    p.write_text(json.dumps(_grid(cfg_dict, 2e-3)))
    assert imitation.expert_targets(p, cfg) == {i.name: 2e-3 for i in cfg.train}
    p.write_text(json.dumps(_grid(cfg_dict, 2e-3, split="heldout")))
    with pytest.raises(ConfigError, match="not 'train'"):
        imitation.expert_targets(p, cfg)
    g = _grid(cfg_dict)
    del g["instances"][cfg.train[1].name]
    p.write_text(json.dumps(g))
    with pytest.raises(ConfigError, match=cfg.train[1].name):
        imitation.expert_targets(p, cfg)
    g = _grid(cfg_dict, lr=-1.0)
    p.write_text(json.dumps(g))
    with pytest.raises(ConfigError, match="best_lr_refined"):
        imitation.expert_targets(p, cfg)


def _obs_at(cfg, lr):
    return observe(0.0, Hparams(lr, 0.01, 1.0), cfg.bounds, [], 1.0, 1.0, 0.0)


def test_expert_action_moves_lr_toward_the_target_and_holds_the_rest(cfg_dict):
    cfg = parse_config(cfg_dict)
    obs = np.stack([_obs_at(cfg, lr) for lr in (1e-5, 5e-4, 1e-3, 2e-3, 1e-1)])
    assert np.allclose(imitation.lr_from_obs(obs, cfg), [1e-5, 5e-4, 1e-3, 2e-3, 1e-1], rtol=1e-5)
    a = imitation.expert_action(obs, np.full(5, 1e-3), cfg)
    step = cfg.action.max_log2_step
    assert a[0, 0] == 1.0 and a[-1, 0] == -1.0  # far away: a full step toward the target
    assert a[1, 0] == pytest.approx(min(1.0, 1.0 / step), abs=1e-5)  # one doubling short
    assert a[2, 0] == pytest.approx(0.0, abs=1e-5)
    assert a[3, 0] == pytest.approx(max(-1.0, -1.0 / step), abs=1e-5)
    assert np.all(a[:, 1:] == 0.0)


def test_imitation_warm_start_steers_a_low_start_up_and_a_high_one_down(cfg_dict, tmp_path):
    p = tmp_path / "fast.yaml"
    p.write_text(yaml.safe_dump(cfg_dict))
    grid = tmp_path / "grid.json"
    g = _grid(cfg_dict)
    targets = {i["name"]: lr for i, lr in zip(cfg_dict["train"], (7e-4, 1.4e-3))}  # each instance its own
    for name, lr in targets.items():
        g["instances"][name]["best_lr_refined"] = lr
    grid.write_text(json.dumps(g))
    folder = train_agent.train(train_agent.parse_args([
        "--config", str(p), "--decisions", "4", "--imitate", str(grid), "--imitation-episodes", "6",
        "--out", str(tmp_path / "agents"), "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}",
        "--no-heldout", "--validate-every", "0"]))
    meta = json.loads((folder / "agent.json").read_text())
    rec = meta["imitation"]
    assert rec["episodes"] == 6 and rec["decisions"] == 6 * 2  # 8-step episodes, a decision every 4 steps
    assert rec["targets"] == targets
    assert rec["action_mse_after"] < 0.5 * rec["action_mse_before"]
    assert meta["learner_hparams"]["learning_rate"] == 1e-4  # PPO refines the warm start gently

    controller = Controller(folder)
    env = FineTuneEnv(controller.env_config, split="heldout")  # an instance it never saw
    name = env.instances[0].name
    moves = {}
    for lr in (1.5e-4, 8e-3):  # inside the training starts' range [1e-4, 1e-2], either side of both targets
        obs, _ = env.reset(seed=0, options={"instance": name, "initial_hparams": Hparams(lr, 0.01, 1.0)})
        moves[lr] = float(controller.act(obs)[0])
    assert moves[1.5e-4] > 0.3 and moves[8e-3] < -0.3, moves


def test_imitation_only_policy_is_the_warm_start_without_ppo_updates(cfg_dict, tmp_path):
    p = tmp_path / "fast.yaml"
    p.write_text(yaml.safe_dump(cfg_dict))
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(_grid(cfg_dict, 1e-3)))
    folder = train_agent.train(train_agent.parse_args([
        "--config", str(p), "--decisions", "0", "--imitate", str(grid), "--imitation-episodes", "2",
        "--out", str(tmp_path / "agents"), "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}",
        "--no-heldout", "--validate-every", "0"]))
    meta = json.loads((folder / "agent.json").read_text())
    assert meta["total_timesteps"] == 0 and meta["imitation"]["episodes"] == 2


class _FakeVecEnv:
    """Two environments with episodes of different lengths, so they reset at different times; each
    reports its instance at reset (as SB3's reset_infos) and after each step."""

    def __init__(self, cfg, lengths=(2, 3)):
        self.num_envs, self.cfg, self.lengths = 2, cfg, lengths
        self.names = [[i.name for i in cfg.train], [i.name for i in reversed(cfg.train)]]
        self.episode = [0, 0]
        self.t = [0, 0]
        self.lr = [1e-5, 1e-1]
        self.unwrapped = self
        self.reset_infos = [{}, {}]

    def _inst(self, i):
        return self.names[i][self.episode[i] % len(self.names[i])]

    def reset(self):
        self.reset_infos = [{"instance": self._inst(i)} for i in range(2)]
        return self.get_original_obs()

    def get_original_obs(self):
        return np.stack([observe(self.t[i] / 10, Hparams(self.lr[i], 0.01, 1.0), self.cfg.bounds, [], 1.0, 1.0, 0.0)
                         for i in range(2)])

    def step(self, actions):
        dones, infos = [], []
        for i in range(2):
            self.lr[i] = float(np.clip(self.lr[i] * 2.0 ** actions[i][0], *self.cfg.bounds.lr))
            infos.append({"instance": self._inst(i)})
            self.t[i] += 1
            done = self.t[i] == self.lengths[i]
            if done:
                self.t[i], self.episode[i] = 0, self.episode[i] + 1
                self.lr[i] = [1e-5, 1e-1][i]
                self.reset_infos[i] = {"instance": self._inst(i)}
            dones.append(done)
        return self.get_original_obs(), np.array([1.0, 2.0]), np.array(dones), infos


def test_collect_labels_each_state_with_its_own_instances_target_across_resets(cfg_dict):
    cfg = parse_config(cfg_dict)
    a, b = (i.name for i in cfg.train)
    targets = {a: 1e-4, b: 1e-2}
    demos = imitation.collect(_FakeVecEnv(cfg), targets, cfg, episodes=5, noise=0.0, gamma=0.5, seed=0)
    assert demos.episodes == 5
    for obs, act, name in zip(demos.raw_obs, demos.actions, demos.instances):
        assert act[0] == pytest.approx(imitation.expert_action(obs[None], np.array([targets[name]]), cfg)[0, 0])
    assert set(demos.instances) == {a, b}  # both environments moved on to their next instance
    # discounted returns, from 0 at each episode's end: env 0 earns 1 per step (2 steps), env 1 earns 2 (3 steps)
    assert sorted(set(np.round(demos.returns, 6))) == sorted({1.0, 1.5, 2.0, 3.0, 3.5})
