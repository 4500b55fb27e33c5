"""The learners' buffers leave an interrupted episode out, and only it (no Ray needed here)."""
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
