"""Ray actors as parallel environments: loopback only, PPO learns through them, a killed worker
is restarted and training completes."""
import os
import signal

import pytest
import ray

from agents.ray_vec_env import RayVecEnv, init_ray
from trainers.config import parse_config



@pytest.fixture(scope="module")
def ray_local():
    started = init_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


def test_private_ray_binds_to_loopback(ray_local):
    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
    assert ray.util.get_node_ip_address() == "127.0.0.1"


def test_ppo_trains_through_ray_actors_and_survives_a_killed_worker(ray_local, fast_cfg_dict):
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor

    venv = RayVecEnv(parse_config(fast_cfg_dict).model_dump(mode="json"), 2)
    pids = venv.worker_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids  # each env is its own process

    class KillOnce(BaseCallback):
        killed = False

        def _on_step(self) -> bool:
            if not self.killed and self.num_timesteps >= 4:
                os.kill(pids[0], signal.SIGKILL)
                self.killed = True
            return True

    episodes = []

    class Count(BaseCallback):
        def _on_step(self) -> bool:
            episodes.extend(i for i in self.locals["infos"] if "episode" in i)
            return True

    model = PPO("MlpPolicy", VecMonitor(venv), n_steps=6, batch_size=12, n_epochs=2, device="cpu", seed=0)
    model.learn(total_timesteps=12, callback=[KillOnce(), Count()])
    assert model.num_timesteps >= 12
    assert len(venv.dropped) == 1 and "worker died" in venv.dropped[0]["reason"]
    assert venv.worker_pids()[0] != pids[0]  # restarted, in a new process
    assert len(episodes) >= 3  # finished episodes from both workers still reached the learner
    venv.close()
