"""Ray actors as parallel environments: loopback only, PPO learns through them, and worker faults
are handled honestly: a killed worker's episode is left out of what PPO trains on, a hung worker
is treated as dead, a worker that crashes at every start stops the run, restarted workers reset
with a seed."""
import os
import signal
import time

import numpy as np
import pytest
import ray

from agents.learners.dropped_episodes import DropAwareRolloutBuffer, mark_dropped
from agents.learners.sb3_setup import build_model
from agents.parallel.ray_cluster import init_ray
from agents.parallel.ray_vec_env import EnvWorker, RayVecEnv, WorkerFailure
from trainers.config import parse_config

# pytest-xdist (bash test.sh): tests that start a Ray node run one at a time, in one worker
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def ray_local():
    started = init_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture()
def cfg_dict(fast_cfg_dict):
    return parse_config(fast_cfg_dict).model_dump(mode="json")


def test_private_ray_binds_to_loopback(ray_local):
    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_ppo_leaves_a_killed_workers_episode_out_and_both_workers_contribute(ray_local, cfg_dict):
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor

    venv = RayVecEnv(cfg_dict, 2, seed=0)
    pids = venv.worker_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids  # each env is its own process
    finished = {0: 0, 1: 0}
    seen = {"dropped_infos": [], "drop_row": None}

    class KillOnceAndCount(BaseCallback):
        killed = False

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            mark_dropped(self.model, infos)  # what the training run's callback does
            for env, info in enumerate(infos):
                finished[env] += "episode" in info
                if "dropped" in info:
                    seen["dropped_infos"].append(dict(info))
                    seen["drop_row"] = self.model.rollout_buffer.pos  # the row this step is stored in
            if not self.killed and self.num_timesteps >= 6:  # env 0 is one decision into its second episode
                os.kill(pids[0], signal.SIGKILL)
                self.killed = True
            return True

    model = build_model("ppo", VecMonitor(venv), 0, {"n_steps": 6, "batch_size": 12, "n_epochs": 2})
    assert isinstance(model.rollout_buffer, DropAwareRolloutBuffer)
    model.learn(total_timesteps=12, callback=KillOnceAndCount())
    assert model.num_timesteps == 12
    assert len(venv.dropped) == 1 and "worker died" in venv.dropped[0]["reason"]
    (info,) = seen["dropped_infos"]
    assert "episode" not in info and "terminal_observation" not in info  # nothing invented reaches SB3
    # the rollout (6 steps x 2 envs) holds the interrupted episode's rows of env 0: all left out
    valid = model.rollout_buffer.valid
    assert valid[:, 1].all() and not valid[:, 0].all()
    left_out = np.flatnonzero(~valid[:, 0]).tolist()
    starts = model.rollout_buffer.episode_starts  # (rows, envs), before flattening
    first = max(r for r in range(seen["drop_row"] + 1) if r == 0 or starts[r, 0])
    assert left_out == list(range(first, seen["drop_row"] + 1))  # the interrupted episode, and only it
    assert len(left_out) == 2  # its first decision, already in the buffer, and the dropped step
    trained_on = sum(len(b.actions) for b in model.rollout_buffer.get(batch_size=4))
    assert trained_on == valid.sum() == 12 - len(left_out)
    # both workers finished real episodes; the restarted one was reset with a recorded seed
    assert finished[0] >= 1 and finished[1] >= 2
    info = venv.worker_info()
    assert info[0]["pid"] != pids[0] and info[0]["last_reset_seed"] == venv.dropped[0]["restart_seed"]
    assert isinstance(venv.dropped[0]["restart_seed"], int)
    venv.close()


def test_hung_worker_is_treated_as_dead_and_restarted(ray_local, cfg_dict, tmp_path):
    marker = str(tmp_path / "hung-once")

    class HangsOnce(EnvWorker):
        def step(self, action):
            if not os.path.exists(marker):
                open(marker, "w").close()
                time.sleep(3600)
            return super().step(action)

    venv = RayVecEnv(cfg_dict, 1, seed=0, call_timeout_s=30, worker_cls=HangsOnce)  # the test waits this long
    venv.reset()
    t0 = time.monotonic()
    _, rewards, dones, infos = venv.step(np.zeros((1, 3), dtype=np.float32))
    assert time.monotonic() - t0 < 300
    assert dones[0] and rewards[0] == 0.0 and "hung" in infos[0]["dropped"]
    assert venv.failures == [1]
    venv.call_timeout_s = 600  # only the hang waits 30 s; a slow, loaded machine's real step is not one
    _, _, _, infos = venv.step(np.zeros((1, 3), dtype=np.float32))  # the restarted worker works
    assert "dropped" not in infos[0]
    venv.close()


def test_worker_that_crashes_at_every_start_stops_the_run(ray_local, cfg_dict):
    class CrashesAtStart(EnvWorker):
        def __init__(self, cfg_dict, rank):
            os._exit(1)

    venv = RayVecEnv(cfg_dict, 1, seed=0, max_restarts=1, worker_cls=CrashesAtStart, start_timeout_s=120)
    t0 = time.monotonic()
    with pytest.raises(WorkerFailure, match=r"env 0: its Ray worker failed 2 times \(limit --max-restarts 1\)"):
        venv.reset()
    assert time.monotonic() - t0 < 240
    venv.close()


def test_a_worker_killed_between_calls_drops_its_episode_instead_of_stepping_a_fresh_one(ray_local, cfg_dict):
    """Killed while idle (PPO's update between rollouts, say), the worker is back before the next
    step reaches it, with no episode: the step is a dropped episode and the worker resets."""
    venv = RayVecEnv(cfg_dict, 1, seed=0)
    venv.reset()
    (pid,) = venv.worker_pids()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # Ray restarts it on its own; where() waits for the new process
        try:
            if venv.worker_pids() != [pid]:
                break
        except ray.exceptions.RayActorError:
            time.sleep(0.5)
    assert venv.worker_pids() != [pid]
    _, rewards, dones, infos = venv.step(np.zeros((1, 3), dtype=np.float32))
    assert dones[0] and rewards[0] == 0.0 and "worker died" in infos[0]["dropped"]
    assert "LostEpisode" in infos[0]["dropped"] and venv.failures == [1]
    _, _, _, infos = venv.step(np.zeros((1, 3), dtype=np.float32))  # reset with its restart seed, it steps
    assert "dropped" not in infos[0]
    assert venv.worker_info()[0]["last_reset_seed"] == venv.dropped[0]["restart_seed"]
    venv.close()
