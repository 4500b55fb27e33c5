"""MLflow on loopback or a local SQLite file: where every run, episode and plot is recorded.

Default store: results/mlflow.db with artifacts in results/mlartifacts (no server needed);
--tracking-uri or MLFLOW_TRACKING_URI points elsewhere (e.g. http://127.0.0.1:5000). Artifacts
follow the store: beside another SQLite file, in its folder's mlartifacts/; on a server, wherever
the server keeps them.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from trainers.config import REPO_ROOT

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # else the client looks up a telemetry host

RESULTS = REPO_ROOT / "results"
DEFAULT_DB = RESULTS / "mlflow.db"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"


URI_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(tracking_uri: Optional[str]) -> None:
    """Refuse a store MLflow cannot open, before a command writes anything."""
    from trainers.config import ConfigError

    uri = tracking_uri or default_tracking_uri()
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in URI_SCHEMES:
        raise ConfigError(f"MLflow tracking URI {uri!r}: expected one of {', '.join(s + ':' for s in URI_SCHEMES)} "
                          "(for example sqlite:///results/mlflow.db or http://127.0.0.1:5000)")
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        folder = db.parent
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"MLflow tracking URI {uri!r}: {folder} is not a folder")
        from trainers.atomic_files import check_writable_folder

        check_writable_folder(folder, f"MLflow tracking URI {uri!r}: the store's folder")
    if scheme in ("http", "https"):
        check_server_reachable(uri)


SERVER_TIMEOUT_S = 5.0


def check_server_reachable(uri: str) -> None:
    """A tracking server that does not answer makes MLflow's client retry with backoff for minutes
    before it says anything; ask once, briefly, before any work starts."""
    import socket
    from urllib.parse import urlsplit

    from trainers.config import ConfigError

    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"MLflow tracking URI {uri!r}: the port is not a number from 0 to 65535") from None
    try:
        socket.create_connection((parts.hostname or "", port), timeout=SERVER_TIMEOUT_S).close()
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise ConfigError(f"tracking server {uri} not reachable ({why}); start it, or point --tracking-uri "
                          "elsewhere (MLflow's own retries while a run is under way: "
                          "MLFLOW_HTTP_REQUEST_MAX_RETRIES)") from None


def artifact_root(uri: str) -> Optional[Path]:
    """Where a store's artifacts go when this project creates the experiment: beside a SQLite file
    (results/mlartifacts for the default store); a server or file store keeps its own."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return None


def setup(tracking_uri: Optional[str], experiment: str) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import mlflow

    uri = tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        mlflow.set_experiment(experiment)
        return exp.experiment_id
    kwargs: dict[str, Any] = {}
    root = artifact_root(uri)
    if root is not None:  # else MLflow's default ./mlruns would land wherever the user stands
        root.mkdir(parents=True, exist_ok=True)
        kwargs["artifact_location"] = (root.resolve() / experiment).as_uri()
    exp_id = mlflow.create_experiment(experiment, **kwargs)
    mlflow.set_experiment(experiment)
    return exp_id


def run_exists(run_id: str) -> bool:
    """Whether the current store holds this run (a checkpoint may come from another machine)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.tracking.MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def ui_command(tracking_uri: Optional[str] = None) -> str:
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("http"):
        return f"open {uri}"
    return f".venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def flat_params(prefix: str, obj: Any) -> dict[str, Any]:
    """Nested dicts -> 'a.b.c' keys, values truncated to MLflow's parameter size."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_params(f"{prefix}.{k}" if prefix else str(k), v))
    else:
        out[prefix] = str(obj)[:500]
    return out


def log_episode(log: dict, run_name: str, tags: Optional[dict[str, str]] = None) -> None:
    """One episode as a nested run: loss curve, eval curve and hyperparameter trajectory as step
    metrics, so the MLflow UI plots them against training steps."""
    import mlflow
    from mlflow.entities import Metric

    with mlflow.start_run(run_name=run_name, nested=True, tags=tags or {}):
        mlflow.log_params({"instance": log["instance"], "seed": log["seed"], "diverged": log["diverged"]})
        client = mlflow.tracking.MlflowClient()
        run_id = mlflow.active_run().info.run_id
        metrics: list[Metric] = []

        def add(name: str, values: Iterable[tuple[int, float]]) -> None:
            for step, v in values:
                if v is not None and v == v and abs(v) != float("inf"):
                    metrics.append(Metric(name, float(v), 0, int(step)))

        add("train_loss", enumerate(log["train_loss"], start=1))
        add("grad_norm", enumerate(log["grad_norm"], start=1))
        for key in ("lr", "weight_decay", "grad_clip"):
            add(key, ((i + 1, h[key]) for i, h in enumerate(log["schedule"])))
        add("eval_loss", log["eval_curve"])
        for i in range(0, len(metrics), 900):  # the REST API caps a batch at 1000
            client.log_batch(run_id, metrics=metrics[i : i + 900])
        final = {"final_eval_loss": log["eval_curve"][-1][1]}
        if log.get("test_loss") is not None:
            final["test_loss"] = log["test_loss"]
        if log.get("test_metric") is not None:
            final["test_metric"] = log["test_metric"]
        mlflow.log_metrics({k: v for k, v in final.items() if v == v})


@contextmanager
def tracked_run(tracking_uri: Optional[str], experiment: str, run_name: Optional[str] = None,
                run_id: Optional[str] = None) -> Iterator[Any]:
    """The one owner of an MLflow run: started here, ended here (KILLED when the body raises or is
    interrupted), so no run is left open whatever happens inside. ``run_id``: continue that run
    (a resumed training); if this store does not hold it (a fresh clone, another machine), a new
    run is started and tagged ``resumed_from_run``."""
    import mlflow

    setup(tracking_uri, experiment)
    missing = run_id is not None and not run_exists(run_id)
    run = mlflow.start_run(run_id=None if missing else run_id, run_name=run_name if missing or not run_id else None)
    if missing:
        mlflow.set_tag("resumed_from_run", run_id)
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="KILLED")
        raise
    mlflow.end_run()
