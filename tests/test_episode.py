"""The one episode loop: a policy through it trains exactly as env.step does; held and scheduled
plans apply what they promise, also when an episode is resumed from another run's state (PBT)."""
import numpy as np
import pytest

from envs.episode import ConstantPlan, PolicyPlan, SchedulePlan, decisions, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.config import parse_config
from trainers.session import Hparams

INSTANCE = "bbc-tech-lm"


@pytest.fixture()
def env(fast_cfg_dict, tiny_session):
    return FineTuneEnv(parse_config(fast_cfg_dict), split="all", session=tiny_session, evaluate_test=True)


def test_policy_plan_trains_exactly_as_env_step(env):
    actions = iter([np.array([0.5, -0.2, 0.1], np.float32), np.array([-1.0, 0.0, 0.3], np.float32)])
    obs, _ = env.reset(seed=4, options={"instance": INSTANCE})
    done, by_step = False, None
    while not done:
        obs, _, term, trunc, info = env.step(next(actions))
        done = term or trunc
    by_step = info["episode_log"]
    actions = iter([np.array([0.5, -0.2, 0.1], np.float32), np.array([-1.0, 0.0, 0.3], np.float32)])
    by_loop = run_episode(env, PolicyPlan(lambda o: next(actions)), INSTANCE, 4)
    assert by_loop["train_loss"] == by_step["train_loss"] and by_loop["schedule"] == by_step["schedule"]
    assert by_loop["test_loss"] == by_step["test_loss"] and len(by_loop["rewards"]) == 2


def test_hold_plan_holds_the_drawn_start_or_the_given_set(env):
    drawn = run_episode(env, ConstantPlan(), INSTANCE, 7)
    assert len({tuple(h.values()) for h in drawn["schedule"]}) == 1
    env.reset(seed=7, options={"instance": INSTANCE})
    assert drawn["schedule"][0] == env.session.hparams().as_dict()  # the seed's draw
    given = Hparams(3e-3, 0.02, 0.7)
    held = run_episode(env, ConstantPlan(given), INSTANCE, 7)
    assert all(h == given.as_dict() for h in held["schedule"])


def test_hold_plan_wins_over_a_resumed_episodes_hyperparameters(env):
    """PBT's exploit: continue another member's state, with this member's (explored) values."""
    donor = Hparams(1e-3, 0.01, 1.0)
    first = next(decisions(env, ConstantPlan(donor), INSTANCE, 3))
    assert not first.done
    state = env.episode_state()
    explored = Hparams(4e-3, 0.05, 0.5)
    rest = list(decisions(env, ConstantPlan(explored), INSTANCE, 3, resume=state))
    log = rest[-1].info["episode_log"]
    k = env.cfg.episode.decision_interval
    assert log["schedule"][:k] == [donor.as_dict()] * k  # the donor's part of the episode
    assert log["schedule"][k:] == [explored.as_dict()] * (env.total_steps - k)
    assert all(lr == explored.lr for lr in rest[0].info["lr"])  # what the optimizer really used


def test_schedule_plan_refuses_a_schedule_shorter_than_the_episode(env):
    with pytest.raises(ValueError, match="needs 8"):
        run_episode(env, SchedulePlan([Hparams(1e-3, 0.01, 1.0)] * 3), INSTANCE, 0)
