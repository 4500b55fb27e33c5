"""The cluster path: `train_agent --ray --ray-address` on a two-node Ray cluster on loopback.
The second node's environment worker is killed mid-run; training completes, and MLflow says
what was dropped. The cluster is shut down in every case."""
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from agents.parallel.ray_cluster import loopback_environment
from trainers.config import REPO_ROOT

# pytest-xdist (bash test.sh): tests that start a Ray node run one at a time, in one worker
pytestmark = pytest.mark.xdist_group("ray")


def _stepping_env_worker_pids(raylet_pid: int) -> list[int]:
    """Ray actor processes of class EnvWorker started by one node's raylet that are in a step now
    (Ray titles them ray::EnvWorker.step): its own children, not what they fork."""
    out = []
    for child in psutil.Process(raylet_pid).children(recursive=False):
        try:
            if "EnvWorker.step" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.Error:
            pass
    return out


def _non_loopback_listeners(pids: set[int]) -> set[str]:
    def loopback(ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        return a.is_loopback or bool(getattr(a, "ipv4_mapped", None) and a.ipv4_mapped.is_loopback)

    return {f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids and not loopback(c.laddr.ip)}


@pytest.fixture()
def loopback_cluster(monkeypatch):
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    for k, v in loopback_environment().items():  # the node processes inherit these
        monkeypatch.setenv(k, v)
    ray_constants.ENABLE_RAY_CLUSTER = False
    assert not ray.is_initialized()
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
        second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", resources={"second_node": 1})
        cluster.wait_for_nodes()
        yield cluster, second
    finally:
        cluster.shutdown()


def test_train_agent_on_a_two_node_loopback_cluster_survives_a_killed_worker(loopback_cluster, fast_cfg_dict,
                                                                             tmp_path):
    from ray._private import ray_constants

    cluster, second = loopback_cluster
    d = dict(fast_cfg_dict, train=fast_cfg_dict["train"][:2], heldout=fast_cfg_dict["heldout"][:1])
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump(d))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "agents"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.train_agent", "--algo", "ppo", "--config", str(cfg), "--decisions", "40",
         "--n-envs", "2", "--ray-address", cluster.address, "--out", str(out), "--name", "cluster",
         "--tracking-uri", uri, "--no-heldout", "--validate-every", "0", "--checkpoint-every", "2"],
        cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        raylet = second.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        deadline = time.monotonic() + 600
        victim = None
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _stepping_env_worker_pids(raylet)
            if workers:  # the second node's worker, mid-step: its episode is lost (the first rollout
                victim = workers[0]  # is the whole run, so no checkpoint can say how far it got)
                os.kill(victim, signal.SIGKILL)
                break
            time.sleep(0.05)
        assert victim is not None, "the second node never ran an environment step"
        # nothing the cluster and the run started listens beyond loopback
        ours = {p.pid for p in psutil.Process().children(recursive=True)}
        assert not _non_loopback_listeners(ours)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    meta = json.loads((out / "cluster" / "agent.json").read_text())
    assert meta["total_timesteps"] == 40 and meta["backend"] == "ray"
    (dropped,) = meta["dropped_episodes"]
    assert "worker died" in dropped["reason"]
    assert dropped["left_out_transitions"] >= 1  # the training run told PPO's buffer to leave them out
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(meta["mlflow_run_id"])
    assert run.data.metrics["dropped_episodes"] == 1
    assert "worker died" in run.data.tags["dropped_episode_reasons"]
    assert all(n.node_ip_address == "127.0.0.1" for n in [cluster.head_node, second])
