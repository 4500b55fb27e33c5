"""The learners' buffers leave an interrupted episode out, and only it (no Ray needed here)."""
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from agents.learners.dropped_episodes import DropAwareReplayBuffer, DropAwareRolloutBuffer

OBS = spaces.Box(-10, 10, (3,), np.float32)


def test_replay_buffer_never_samples_a_dropped_episode():
    buf = DropAwareReplayBuffer(100, OBS, spaces.Discrete(4), device="cpu", n_envs=2)
    o = np.zeros((2, 3), np.float32)
    for step in range(6):  # env 0: episode A = steps 0-2 (done at 2), episode B = steps 3-5, dropped at 5
        if step == 5:
            buf.drop_episode(0)
        obs = np.array([[10 * step + env] * 3 for env in range(2)], np.float32)  # encodes (step, env)
        buf.add(obs, o, np.zeros((2, 1)), np.ones(2), np.array([step == 2, False]), [{}, {}])
    assert buf.valid[:6, 0].tolist() == [True, True, True, False, False, False]
    assert buf.valid[:6, 1].all()
    np.random.seed(0)
    sampled = set(buf.sample(3000).observations[:, 0].tolist())
    every = {10.0 * step + env for step in range(6) for env in range(2)}
    assert sampled == every - {30.0, 40.0, 50.0}  # all but env 0's episode B


def test_rollout_buffer_leaves_the_episode_out_of_every_minibatch():
    buf = DropAwareRolloutBuffer(6, OBS, spaces.Box(-1, 1, (1,), np.float32), device="cpu", gamma=0.9, n_envs=2)
    starts = [True, False, False, True, False, False]  # env 0: episode A rows 0-2, episode B rows 3-5
    for step in range(6):
        if step == 5:
            buf.drop_episode(0)  # B is interrupted at its third step
        obs = np.full((2, 3), step, np.float32)
        buf.add(obs, np.zeros((2, 1)), np.ones(2), np.array([starts[step], step == 0]),
                torch.zeros(2), torch.zeros(2))
    buf.compute_returns_and_advantage(torch.zeros(2), np.zeros(2))
    assert buf.valid[:, 0].tolist() == [True, True, True, False, False, False]
    seen = torch.cat([b.observations[:, 0] for b in buf.get(batch_size=4)])
    assert len(seen) == 9 and sorted(seen.tolist()) == [0, 0, 1, 1, 2, 2, 3, 4, 5]


def test_drop_right_after_an_episode_ended_leaves_only_the_step_out():
    buf = DropAwareRolloutBuffer(4, OBS, spaces.Box(-1, 1, (1,), np.float32), device="cpu", n_envs=1)
    for step in range(4):
        if step == 2:
            buf.drop_episode(0, starts_now=True)  # the episode of rows 0-1 ended at row 1
        buf.add(np.full((1, 3), step, np.float32), np.zeros((1, 1)), np.ones(1), np.array([step in (0, 2)]),
                torch.zeros(1), torch.zeros(1))
    assert buf.valid[:, 0].tolist() == [True, True, False, True]


class _Box(gym.Env):
    observation_space = OBS
    action_space = spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 1.0, False, False, {}


def test_ppo_skips_an_update_whose_whole_rollout_was_left_out():
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.learners.sb3_setup import build_model

    model = build_model("ppo", DummyVecEnv([_Box]), 0, {"n_steps": 4, "batch_size": 4, "n_epochs": 1})
    model.learn(4)  # one real rollout and update
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.rollout_buffer.valid[:] = False  # as if every worker had failed during it
    model.train()
    assert all(bool((before[k] == v).all()) for k, v in model.policy.state_dict().items())


def test_qlearning_does_not_learn_from_a_dropped_step():
    from agents.learners.qlearning import QLearningAgent

    class Stub:  # a VecEnv whose only worker dies on its first step
        def reset(self):
            return np.zeros((1, 14), np.float32)

        def step(self, actions):
            return np.zeros((1, 14), np.float32), np.array([5.0]), np.array([True]), [{"dropped": "env 0: died"}]

    agent = QLearningAgent(3, seed=0)
    infos = []
    agent.learn(Stub(), 3, on_step=lambda n, r, i: infos.extend(i))
    assert all(float(v.sum()) == 0.0 for v in agent.q.values())  # the invented reward 5 never got in
    assert all(i["left_out_transitions"] == 1 for i in infos)
