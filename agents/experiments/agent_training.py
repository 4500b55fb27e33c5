"""agents.train_agent's job from start to end: learn a controller into its agent folder (the
learners' training run), then evaluate it on the held-out instances, all inside one MLflow run."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from agents.learners.agent_folder import learned_anything, replacing
from agents.learners.training_run import TrainingOptions, read_state, run_training
from agents.parallel.ray_vec_env import WorkerFailure
from agents.reporting import mlflow_tracking
from trainers.atomic_files import exclusive_lock
from trainers.config import InstanceSetConfig


class RunStopped(Exception):
    """A run that stopped before its end (Ctrl-C, a lost worker), after checkpointing: what the user
    can do next, in one line."""

    def __init__(self, why: str, folder: Path, interrupted: bool) -> None:
        self.interrupted = interrupted
        if learned_anything(folder):
            n = read_state(folder)["num_timesteps"]
            super().__init__(f"{why}; checkpointed at decision {n} in {folder}: rerun the same command with "
                             "--resume to continue")
        else:
            super().__init__(f"{why} before anything was learned; nothing to resume: rerun the command to start again")


def train_and_evaluate(cfg: InstanceSetConfig, opts: TrainingOptions, folder: Path, eval_seeds: Optional[int],
                       eval_pool: dict) -> Optional[dict]:
    """``eval_seeds`` None: no held-out evaluation. Returns the held-out summary (None without one).
    Ctrl-C or a lost worker ends as RunStopped, whose message says what was kept."""
    with exclusive_lock(folder, "agent folder"):  # a second run on this folder is refused, not interleaved
        try:
            return _train_and_evaluate(cfg, opts, folder, eval_seeds, eval_pool)
        except KeyboardInterrupt:
            raise RunStopped("interrupted", folder, True) from None
        except WorkerFailure as err:  # not bad input: the run stopped; its checkpoint stays
            raise RunStopped(f"{err}; fix the cause", folder, False) from None


def _train_and_evaluate(cfg: InstanceSetConfig, opts: TrainingOptions, folder: Path, eval_seeds: Optional[int],
                        eval_pool: dict) -> Optional[dict]:
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
