"""agents.train_agent's job from start to end: learn a controller into its agent folder (the
learners' training run), then evaluate it on the held-out instances, all inside one MLflow run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from agents.learners.agent_folder import replacing
from agents.learners.training_run import TrainingOptions, read_state, run_training
from agents.reporting import mlflow_tracking
from trainers.config import InstanceSetConfig


def train_and_evaluate(cfg: InstanceSetConfig, opts: TrainingOptions, folder: Path, eval_seeds: Optional[int],
                       eval_pool: dict) -> Optional[dict]:
    """``eval_seeds`` None: no held-out evaluation. Returns the held-out summary (None without one)."""
    import mlflow

    summary = None
    run_id = read_state(folder).get("mlflow_run_id") if opts.resume else None
    with mlflow_tracking.tracked_run(opts.tracking_uri, "agent-training", folder.name, run_id=run_id):
        with replacing(folder, opts.resume):
            result = run_training(cfg, opts, folder)
        if eval_seeds is not None:
            from agents.experiments.heldout import evaluate_and_report

            summary = evaluate_and_report(folder, eval_seeds, result.meta["command"], eval_pool, sessions=result.sessions)
        mlflow.log_artifacts(str(folder), artifact_path="agent")
    return summary
