"""Ray for this project: start a private one bound to 127.0.0.1, or join a cluster; and the one
place that decides what a trial or environment actor asks Ray for (a GPU where the cluster has
them, else one CPU).

Nothing a private Ray starts talks beyond loopback: Ray binds to the machine's external address
unless told otherwise when it is first imported, and its usage-stats module probes cloud-metadata
addresses unless ~/ray_bootstrap_config.yaml exists; both are handled here.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Optional

from trainers.config import REPO_ROOT, cache_root

log = logging.getLogger(__name__)
START_ATTEMPTS = 3


def ray_home() -> Path:
    """The HOME every Ray process started here gets: it holds ray_bootstrap_config.yaml (a local
    cluster, so no metadata probes) and the cluster's auth token (Ray 2.60 turns token auth on for
    new local clusters)."""
    home = cache_root() / "ray_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    token = home / ".ray" / "auth_token"
    if not token.exists():
        token.parent.mkdir(exist_ok=True)
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return home


def loopback_environment() -> dict[str, str]:
    """Environment variables for Ray processes (nodes started by hand or by a test included) that
    keep them on loopback and find this project."""
    home = ray_home()
    env = {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_TOKEN_PATH": str(home / ".ray" / "auth_token"), "PYTHONPATH": str(REPO_ROOT),
           "DSRL_CACHE": str(cache_root()), "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    if os.environ.get("DS_ACCELERATOR"):  # an empty value would make DeepSpeed refuse to import
        env["DS_ACCELERATOR"] = os.environ["DS_ACCELERATOR"]
    return env


WORKER_ENV_KEYS = ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_OFFLINE", "DSRL_CACHE",
                   "DS_ACCELERATOR")


def _worker_env_vars() -> dict[str, str]:
    """What every worker process needs wherever it runs: the project on its path and no network."""
    env = loopback_environment()
    return {k: env[k] for k in WORKER_ENV_KEYS if k in env}


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Join a cluster (every node needs this project at the same path and the same venv), or start
    a private Ray bound to 127.0.0.1. Returns True if this call started Ray (the caller stops it)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        from trainers.config import ConfigError

        try:
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": _worker_env_vars()})
        except (ConnectionError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"--ray-address {address}: cannot join that Ray cluster ({first})") from None
        return True  # connected by this call: disconnect when done (the cluster itself stays up)
    env = loopback_environment()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray reads this when ray is first imported; unset, it replaces 127.0.0.1 by the machine's
    # external address. Set it for this process and the ones Ray starts, and for a ray already imported.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ["RAY_AUTH_TOKEN_PATH"] = env["RAY_AUTH_TOKEN_PATH"]  # every Ray process finds the token
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = env["HOME"]  # inherited by the processes ray.init starts
    try:
        worker_env = {k: env[k] for k in ("HOME", "RAY_AUTH_TOKEN_PATH")} | _worker_env_vars()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                # address="local": a node of its own, never one that RAY_ADDRESS or another process's
                # test cluster (/tmp/ray/ray_current_cluster) points at
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, runtime_env={"env_vars": worker_env})
                break
            except Exception as err:  # Ray gives its raylet a fixed 30 s to register; a loaded machine misses it
                if "timed out during startup" not in str(err) or attempt == START_ATTEMPTS:
                    raise
                log.warning("Ray's node did not start in time (attempt %d of %d); retrying", attempt, START_ATTEMPTS)
                ray.shutdown()
    finally:
        if old_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old_home
    return True


def worker_resources() -> dict[str, Any]:
    """What one environment actor or one trial asks for: a GPU where the cluster has any, else a
    CPU (sessions use one torch thread). Ray actor options spelling."""
    import ray

    return {"num_gpus": 1, "num_cpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"num_cpus": 1}


def trial_resources() -> dict[str, float]:
    """The same, in Ray Tune's ``with_resources`` spelling."""
    r = worker_resources()
    return {"gpu": r["num_gpus"], "cpu": r["num_cpus"]} if "num_gpus" in r else {"cpu": r["num_cpus"]}
