"""Shared fixtures. One DeepSpeed session per test process for the tiny preset: tests that need
a fresh engine (other ZeRO stages, bf16, SmolLM2) build their own."""
from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # bash test.sh: one process per core, one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # (PLATFORM.md: 2 threads beside other load ran 4-40x slower)

import pytest


# The tiny preset at test size: the same model, data and engine, smaller batches (real, cheaper).
TEST_SESSION = {"micro_batch_size": 4, "seq_len": 32}


@pytest.fixture(autouse=True)
def _mlflow_globals_stay_in_their_test():
    """A test that sets MLflow's tracking URI or active experiment gives them back: the next test's
    store has no experiment of that id (as CI once found)."""
    import mlflow
    import mlflow.tracking._tracking_service.utils as tracking
    import mlflow.tracking.fluent as fluent

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")  # the setters export these for subprocesses
    uri, experiment = tracking._tracking_uri, fluent._active_experiment_id  # None: not set
    environ = {k: os.environ.get(k) for k in names}
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    tracking._tracking_uri, fluent._active_experiment_id = uri, experiment
    for k, v in environ.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_cfg():
    from trainers.config import load_config

    return load_config("tiny", overrides={"session": TEST_SESSION})


@pytest.fixture(scope="session")
def tiny_session(tiny_cfg):
    from trainers.session import FineTuneSession

    return FineTuneSession(tiny_cfg.session)


@pytest.fixture()
def tiny_env(tiny_cfg, tiny_session):
    from envs.finetune_env import FineTuneEnv

    return FineTuneEnv(tiny_cfg, split="all", session=tiny_session)


@pytest.fixture(scope="session")
def fast_cfg_dict():
    """The tiny preset with short episodes, for tests that run many of them."""
    import yaml

    from trainers.config import CONFIG_DIR

    d = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    d["session"].update(TEST_SESSION)
    d["episode"]["total_steps"] = 8
    d["episode"]["decision_interval"] = 4
    d["episode"]["eval_examples"] = 8
    d["episode"]["test_examples"] = 8
    for inst in d["train"] + d["heldout"]:
        inst.pop("total_steps", None)
    return d
