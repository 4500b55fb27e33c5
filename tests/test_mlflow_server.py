"""A real `mlflow server` on 127.0.0.1: a short training run is pointed at it, then its run,
metrics and artifacts are read back through the REST API."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from agents import train_agent



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture()
def mlflow_server(tmp_path):
    port = _free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}")
            time.sleep(1)
    else:
        pytest.fail("mlflow server did not come up")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=60)


def test_training_run_round_trips_through_a_real_mlflow_server(mlflow_server, fast_cfg_dict, tmp_path):
    d = dict(fast_cfg_dict, train=fast_cfg_dict["train"][:1], heldout=fast_cfg_dict["heldout"][:1])
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump(d))
    args = train_agent.parse_args(["--algo", "qlearning", "--config", str(cfg), "--decisions", "4",
                                   "--out", str(tmp_path / "agents"), "--tracking-uri", mlflow_server,
                                   "--eval-seeds", "1", "--validate-every", "0"])
    folder = train_agent.train(args)
    run_id = json.loads((folder / "agent.json").read_text())["mlflow_run_id"]
    api = mlflow_server + "/api/2.0/mlflow"
    run = _get(f"{api}/runs/get?run_id={run_id}")["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["algo"] == "qlearning" and params["total_decisions"] == "4"
    hist = _get(f"{api}/metrics/get-history?run_id={run_id}&metric_key=episode_return")["metrics"]
    assert len(hist) == 2  # two 2-decision episodes
    exp_id = run["info"]["experiment_id"]
    body = json.dumps({"experiment_ids": [exp_id], "filter": f"tags.mlflow.parentRunId = '{run_id}'"}).encode()
    req = urllib.request.Request(f"{api}/runs/search", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        children = json.loads(r.read()).get("runs", [])
    # held-out episodes of the policy, the default recipe and no control (initial held)
    assert sorted(c["info"]["run_name"].split("/")[1] for c in children) == ["default_recipe", "held_start", "policy"]
    arts = _get(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={run_id}")
    names = {f["path"] for f in arts.get("files", [])}
    assert {"agent", "plots", "heldout.md"} <= names
