"""The environment on the real engine: API contract, determinism, divergence, cheap resets."""
import math

import deepspeed
import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers DeepSpeedFineTune-v0)
from envs.finetune_env import FineTuneEnv
from trainers.config import parse_config


@pytest.fixture()
def fast_env(fast_cfg_dict, tiny_session):
    return FineTuneEnv(parse_config(fast_cfg_dict), split="all", session=tiny_session)


def test_gymnasium_make_builds_the_default_env_on_deepspeed(tiny_session):
    env = gymnasium.make("DeepSpeedFineTune-v0", session=tiny_session)
    assert isinstance(env.unwrapped.engine, deepspeed.DeepSpeedEngine)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["instance"] == env.unwrapped.cfg.train[0].name


@pytest.mark.parametrize("mode", ["box", "discrete"])
def test_check_env_passes(mode, fast_cfg_dict, tiny_session):
    d = dict(fast_cfg_dict, action={"mode": mode})
    env = FineTuneEnv(parse_config(d), session=tiny_session)
    check_env(env, skip_render_check=True)
    assert isinstance(env.action_space, gymnasium.spaces.Discrete if mode == "discrete" else gymnasium.spaces.Box)


def _run(env, seed, actions, instance="bbc-tech-lm"):
    env.reset(seed=seed, options={"instance": instance})
    losses, rewards = [], []
    for a in actions:
        _, r, term, _, info = env.step(np.array(a, dtype=np.float32))
        losses += info["train_loss"] + [info["eval_loss"]]
        rewards.append(r)
        if term:
            break
    return losses, rewards, info


def test_same_seed_and_actions_give_identical_losses(fast_env):
    actions = [[0.5, 0, 0], [-1, 0.3, -1]]
    a = _run(fast_env, 7, actions)[0]
    _run(fast_env, 8, actions)  # something else in between
    b = _run(fast_env, 7, actions)[0]
    assert a == b
    assert _run(fast_env, 9, actions)[0] != a


def test_return_is_total_normalised_improvement(fast_env):
    obs, info0 = fast_env.reset(seed=1, options={"instance": "bbc-tech-lm"})
    total, term = 0.0, False
    while not term:
        _, r, term, _, info = fast_env.step(np.zeros(3, dtype=np.float32))
        total += r
    assert info["steps_done"] == fast_env.total_steps == 8
    assert total == pytest.approx((info0["eval_loss"] - info["eval_loss"]) / info0["eval_loss"], rel=1e-6)
    assert total > 0  # fine-tuning on the topic lowers its eval loss
    assert "episode_log" in info and len(info["episode_log"]["schedule"]) == 8


def test_actions_change_the_applied_hyperparameters(fast_env):
    _, info0 = fast_env.reset(seed=3)
    _, _, _, _, info = fast_env.step(np.array([1.0, -1.0, 0.5], dtype=np.float32))
    h0, h1 = info0["hparams"], info["hparams"]
    assert h1["lr"] == pytest.approx(2 * h0["lr"])
    assert h1["weight_decay"] == pytest.approx(h0["weight_decay"] / 2)
    assert h1["grad_clip"] == pytest.approx(h0["grad_clip"] * 2**0.5)
    assert fast_env.engine.optimizer.param_groups[0]["lr"] == pytest.approx(h1["lr"])
    assert all(lr == pytest.approx(h1["lr"]) for lr in info["lr"])


def test_absurd_learning_rate_ends_episode_with_penalty(fast_cfg_dict, tiny_session):
    d = dict(fast_cfg_dict, bounds={"lr": [1e-5, 1e4]})
    env = FineTuneEnv(parse_config(d), split="all", session=tiny_session)
    env.reset(seed=0, options={"instance": "bbc-tech-lm", "initial_hparams": {"lr": 1e3, "weight_decay": 0.0, "grad_clip": 10.0}})
    obs, r, term, trunc, info = env.step(np.ones(3, dtype=np.float32))
    assert term and info["diverged"] and r == -env.cfg.episode.divergence_penalty
    assert env.observation_space.contains(obs)
    obs, _ = env.reset(seed=0, options={"instance": "bbc-tech-lm"})  # and the next episode is healthy
    _, r, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert not info["diverged"] and math.isfinite(info["eval_loss"])


def test_reset_restores_weights_and_never_reinitialises(fast_cfg_dict):
    from trainers.bench_session import counting_deepspeed_initialize

    with counting_deepspeed_initialize() as calls:
        env = FineTuneEnv(parse_config(fast_cfg_dict), split="all")  # its own engine: one real call
        assert len(calls) == 1 and isinstance(env.engine, deepspeed.DeepSpeedEngine)
        env.reset(seed=0, options={"instance": "bbc-tech-lm"})
        base = [p.detach().clone() for p in env.engine.module.parameters()]
        env.step(np.ones(3, dtype=np.float32))
        assert any(not (p == b).all() for p, b in zip(env.engine.module.parameters(), base))  # it trained
        env.reset(seed=1, options={"instance": "arithmetic"})
        assert all((p == b).all() for p, b in zip(env.engine.module.parameters(), base))
        assert env.engine.optimizer.state == {} or all(
            float(s["exp_avg"].abs().sum()) == 0 for s in env.engine.optimizer.state.values())
        env.reset(seed=2, options={"instance": "arithmetic"})  # data now built: a reset is a restore
        assert env.reset_seconds < 0.1
        assert len(calls) == 1  # resets and steps never built another engine
    env.session.close()


def test_instances_cycle_and_heldout_split(tiny_cfg, tiny_session):
    env = FineTuneEnv(tiny_cfg, split="heldout", session=tiny_session)
    names = [env.reset(seed=0)[1]["instance"]] + [env.reset()[1]["instance"] for _ in tiny_cfg.heldout]
    assert names[:-1] == [i.name for i in tiny_cfg.heldout] and names[-1] == names[0]
    assert env.reset(seed=5)[1]["instance"] == names[0]  # seeding restarts the cycle


def test_test_split_is_reported_only_when_asked(fast_cfg_dict, tiny_session):
    env = FineTuneEnv(parse_config(fast_cfg_dict), split="heldout", evaluate_test=True, session=tiny_session)
    env.reset(seed=0)
    term = False
    while not term:
        _, _, term, _, info = env.step(np.zeros(3, dtype=np.float32))
    assert math.isfinite(info["test_loss"]) and info["episode_log"]["test_loss"] == info["test_loss"]


def test_user_guess_starts_scatter_around_the_given_lr_and_keep_the_rest_of_the_draw(fast_env):
    """A "user's guess" start: the given lr times a factor in [0.01, 100], drawn after (not
    instead of) the instance's own draws, so weight decay and clipping match the ordinary start
    and the same seed gives the same guess."""
    from envs.finetune_env import FineTuneEnv

    inst = fast_env.cfg.train[0].name
    lo, hi = fast_env.cfg.bounds.lr
    centre = 3e-4
    factors = []
    for seed in range(40):
        _, own = fast_env.reset(seed=seed, options={"instance": inst})
        _, guess = fast_env.reset(seed=seed, options={"instance": inst, "user_guess_lr": centre})
        assert guess["hparams"]["weight_decay"] == own["hparams"]["weight_decay"]
        assert guess["hparams"]["grad_clip"] == own["hparams"]["grad_clip"]
        assert guess["hparams"]["lr"] != own["hparams"]["lr"]
        _, again = fast_env.reset(seed=seed, options={"instance": inst, "user_guess_lr": centre})
        assert again["hparams"] == guess["hparams"]
        assert lo <= guess["hparams"]["lr"] <= hi
        factors.append(guess["hparams"]["lr"] / centre)
    assert 0.01 <= min(factors) and max(factors) <= 100 * (1 + 1e-9)
    # log-uniform over four decades: both tails beyond 10x show up in 40 draws
    assert min(factors) < 0.1 and max(factors) > 10
    env = FineTuneEnv(fast_env.cfg, split="all", session=fast_env.sessions, user_guess_lr=centre)
    _, info = env.reset(seed=3, options={"instance": inst})
    _, guess = fast_env.reset(seed=3, options={"instance": inst, "user_guess_lr": centre})
    assert info["hparams"] == guess["hparams"]  # the constructor's default is the same start
    with pytest.raises(ValueError, match="user_guess_lr"):
        FineTuneEnv(fast_env.cfg, split="all", session=fast_env.sessions, user_guess_lr=-1.0)
