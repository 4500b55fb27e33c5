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
    grid.write_text(json.dumps(_grid(cfg_dict, 1e-3)))
    folder = train_agent.train(train_agent.parse_args([
        "--config", str(p), "--total-steps", "4", "--imitate", str(grid), "--imitation-episodes", "6",
        "--out", str(tmp_path / "agents"), "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}",
        "--no-heldout", "--validate-every", "0"]))
    meta = json.loads((folder / "agent.json").read_text())
    rec = meta["imitation"]
    assert rec["episodes"] == 6 and rec["decisions"] == 6 * 2  # 8-step episodes, a decision every 4 steps
    assert rec["targets"] == {i["name"]: 1e-3 for i in cfg_dict["train"]}
    assert rec["action_mse_after"] < 0.5 * rec["action_mse_before"]
    assert meta["learner_hparams"]["learning_rate"] == 1e-4  # PPO refines the warm start gently

    controller = Controller(folder)
    env = FineTuneEnv(controller.env_config, split="heldout")  # an instance it never saw
    name = env.instances[0].name
    moves = {}
    for lr in (1.5e-4, 8e-3):  # inside the training starts' range [1e-4, 1e-2], either side of 1e-3
        obs, _ = env.reset(seed=0, options={"instance": name, "initial_hparams": Hparams(lr, 0.01, 1.0)})
        moves[lr] = float(controller.act(obs)[0])
    assert moves[1.5e-4] > 0.3 and moves[8e-3] < -0.3, moves
