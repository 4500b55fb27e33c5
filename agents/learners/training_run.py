"""One training run of a controller, from an empty (or checkpointed) agent folder to a saved agent.

The learner (PPO, DQN or tabular Q) drives a VecEnv of fine-tuning environments. One monitor sees
every environment step: progress bar with time left, the training curve, MLflow metrics, dropped
episodes, checkpoints and periodic held-out validation. A crash or Ctrl-C checkpoints first, so
``--resume`` loses at most the decision in flight.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from agents.learners.agent_folder import RUN_MARKER, STATE_FILE, save_env_config, write_agent_json
from agents.learners.dropped_episodes import mark_dropped
from agents.learners.sb3_setup import (ObsNormalization, build_model, learner_hparams, resume_model, save_checkpoint,
                                       save_policy)
from agents.reporting import mlflow_tracking
from envs.control import action_map_for
from envs.episode import PolicyPlan, run_episode
from envs.features import feature_names
from trainers.atomic_files import write_json_atomic, write_text_atomic
from trainers.config import ConfigError, InstanceSetConfig

CURVE_FIELDS = ["timesteps", "instance", "return", "improvement", "diverged", "final_lr"]
REFERENCE_RUNS = "reference_runs"  # the base recipe's runs for the paired reward (envs.episode.ReferenceRuns)


@dataclass
class TrainingOptions:
    """Everything a training run needs besides the instance set; validated by the command."""

    algo: str  # ppo | dqn | qlearning
    decisions: int  # environment steps (decisions) to learn from
    seed: int = 0
    n_envs: int = 1
    backend: str = "inprocess"  # inprocess | subproc | ray
    ray_address: Optional[str] = None
    max_restarts: int = 3  # per Ray worker, before the run stops
    tracking_uri: Optional[str] = None
    validate_every: int = 0  # decisions between held-out validations (0: never)
    checkpoint_every: int = 60
    resume: bool = False
    command: str = ""
    imitate: Optional[Path] = None  # an lr-grid result: warm-start PPO by imitating it (agents/learners/imitation.py)
    imitation_episodes: int = 24
    reference_runs_from: Optional[Path] = None  # another agent's reference_runs/ to start the cache from
    extra_meta: dict[str, Any] = field(default_factory=dict)


class TrainingMonitor:
    """The one place that sees every environment step."""

    def __init__(self, total: int, start: int, checkpoint: Callable[[], None], checkpoint_every: int,
                 validate: Optional[Callable[[], float]], validate_every: int, curve: list[dict],
                 validation: list, dropped: list) -> None:
        from trainers.progress import progress

        self.total, self.curve = total, curve
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.validate, self.validate_every = validate, validate_every
        self.bar = progress(total=total, initial=start, desc="learning the controller", unit="decision", smoothing=0.05)
        self.last = start
        self.learned = start  # PPO: the decisions in its weights (set when each rollout starts)
        # DQN: SB3 calls on_step before it stores the step's transition, so a checkpoint waits for
        # the store (stored()), or the buffer it saves would lack the decision it claims
        self.defer_checkpoints, self.checkpoint_due = False, False
        self.validation: list = validation
        self.dropped: list[dict] = dropped

    def on_step(self, num_timesteps: int, infos: list[dict]) -> bool:
        import mlflow

        self.bar.update(num_timesteps - self.last)
        for info in infos:
            if "dropped" in info:  # a Ray worker died mid-episode: the record says so
                self.dropped.append({"timesteps": num_timesteps, "reason": info["dropped"],
                                     "left_out_transitions": info.get("left_out_transitions")})
                mlflow.log_metric("dropped_episodes", len(self.dropped), step=num_timesteps)
                mlflow.set_tag("dropped_episode_reasons", "; ".join(d["reason"] for d in self.dropped)[-4000:])
                self.bar.write(f"warning: {info['dropped']}")
                continue
            log = info.get("episode_log")
            if log is None:
                continue
            ret = float(sum(log["rewards"]))
            final = log["eval_curve"][-1][1]
            improvement = (log["initial_eval_loss"] - final) / log["initial_eval_loss"] if math.isfinite(final) else -1.0
            row = {"timesteps": num_timesteps, "instance": log["instance"], "return": ret,
                   "improvement": improvement, "diverged": log["diverged"], "final_lr": log["schedule"][-1]["lr"]}
            self.curve.append(row)
            mlflow.log_metrics({"episode_return": ret, "episode_improvement": improvement,
                                f"improvement/{log['instance']}": improvement}, step=num_timesteps)
            recent = self.curve[-20:]
            self.bar.set_postfix(ret=f"{np.mean([r['return'] for r in recent]):+.3f}", refresh=False)
        crossed = lambda every: every > 0 and num_timesteps // every > self.last // every  # noqa: E731
        if crossed(self.checkpoint_every):
            if self.defer_checkpoints:
                self.checkpoint_due = True
            else:
                self.checkpoint()
        if self.validate is not None and crossed(self.validate_every):
            v = self.validate()
            self.validation.append((num_timesteps, v))
            mlflow.log_metric("heldout_validation_return", v, step=num_timesteps)
        self.last = num_timesteps
        return True

    def stored(self) -> None:
        """The step's transition is in the learner's buffer: a checkpoint that waited for it is taken."""
        if self.checkpoint_due:
            self.checkpoint_due = False
            self.checkpoint()

    def close(self) -> None:
        self.bar.close()


def sb3_callback(monitor: TrainingMonitor):
    """SB3's hook into the monitor; it also tells the learner's buffer about dropped episodes
    (before SB3 adds the step to it)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _Callback(BaseCallback):
        def _init_callback(self) -> None:
            monitor.defer_checkpoints = getattr(self.model, "replay_buffer", None) is not None

        def _on_rollout_start(self) -> None:  # the last rollout is learned: PPO's weights hold it
            monitor.learned = int(self.model.num_timesteps)

        def _on_rollout_end(self) -> None:  # DQN (train_freq 1): the step just collected is stored
            monitor.stored()

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            mark_dropped(self.model, infos)
            actions = self.locals.get("clipped_actions")
            if actions is not None and np.asarray(actions).dtype.kind == "f":  # PPO's box actions, as applied
                import mlflow

                mlflow.log_metric("mean_abs_action", float(np.abs(actions).mean()), step=self.num_timesteps)
            return monitor.on_step(self.num_timesteps, infos)

    return _Callback()


def continued_csv(path: Path, upto: Optional[int]):
    """SB3's CSV output (learner_progress.csv). A resumed run (``upto``: the checkpoint's decisions)
    keeps the rows up to its checkpoint; the rows after it describe learning the resumed run does
    again. SB3's own output opens the file with "w+" and would start it empty."""
    from stable_baselines3.common.logger import CSVOutputFormat

    kept: list[dict[str, str]] = []
    if upto is not None and path.is_file():
        with path.open(newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if _decisions(r) <= upto]
    out = CSVOutputFormat(str(path))
    if kept:
        out.keys = list(kept[0])
        writer = csv.DictWriter(out.file, fieldnames=out.keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        out.file.flush()
    return out


def _decisions(row: dict[str, str]) -> float:
    try:
        return float(row.get("time/total_timesteps") or "inf")
    except ValueError:
        return math.inf


def mlflow_sb3_logger(folder: Path, resumed_at: Optional[int] = None):
    """SB3's logger with an extra output that sends every learner metric to MLflow."""
    import mlflow
    from stable_baselines3.common.logger import KVWriter, Logger

    class MLflowOutputFormat(KVWriter):
        def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
            metrics = {k.replace("/", "_"): float(v) for k, v in key_values.items()
                       if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
            if metrics:
                mlflow.log_metrics(metrics, step=step)

    return Logger(str(folder), [continued_csv(folder / "learner_progress.csv", resumed_at), MLflowOutputFormat()])


class HeldoutValidator:
    """Deterministic policy on each held-out instance (validation return, one seed): how the
    controller generalises while it learns. Borrows an in-process engine when there is one,
    snapshotting it so the training episode in flight resumes untouched."""

    def __init__(self, cfg: InstanceSetConfig, act: Callable[[np.ndarray], Any], sessions=None) -> None:
        from envs.finetune_env import FineTuneEnv

        self.env = FineTuneEnv(cfg, split="heldout", session=sessions)
        self.plan, self.shared = PolicyPlan(act), sessions is not None

    def __call__(self) -> float:
        snaps = {k: s.snapshot() for k, s in self.env.sessions.items()} if self.shared else {}
        returns = [sum(run_episode(self.env, self.plan, inst.name, 10_000)["rewards"]) for inst in self.env.instances]
        for k, snap in snaps.items():
            self.env.sessions[k].restore(snap)
        return float(np.mean(returns))


def learned_decisions(model, learned_by_rollouts: int) -> int:
    """Decisions the learner has learned from. PPO learns a rollout at its end: a checkpoint taken
    before the rollout in flight is learned counts only the rollouts learned (when the last one
    started: ``learned_by_rollouts``), and a resume collects the partial one again (its environment
    steps are spent; nothing from it is in the weights). DQN and Q-learning learn every step."""
    if getattr(model, "rollout_buffer", None) is None:
        return int(model.num_timesteps)
    return min(int(model.num_timesteps), int(learned_by_rollouts))


def reference_runs_source(agent: Path, cfg: InstanceSetConfig) -> Path:
    """The reference_runs/ folder of ``agent`` for --reference-runs-from, checked before anything is
    written: a paired-reward config, and a folder that holds recipe runs."""
    if cfg.control.reward != "paired":
        raise ConfigError(f"--reference-runs-from: config {cfg.name!r} has no paired reward, so no reference runs")
    src = Path(agent) / REFERENCE_RUNS
    if src.is_symlink() or not src.is_dir():
        raise ConfigError(f"--reference-runs-from: {src}: not a folder of reference runs")
    try:  # every file readable now, so that the copy after the run starts does not fail half way
        files = [f for f in sorted(src.iterdir()) if f.suffix == ".json" and f.is_file() and not f.is_symlink()]
        for f in files:
            f.read_bytes()
    except OSError as err:
        raise ConfigError(f"--reference-runs-from: {src}: cannot be read ({err.strerror or err})") from None
    if not files:
        raise ConfigError(f"--reference-runs-from: {src}: holds no reference runs (<instance>-seed<k>.json)")
    return src


def seed_reference_runs(src: Path, dest: Path) -> int:
    """Copy the recipe runs this folder lacks (``<instance>-seed<k>.json``), each atomically. Nothing
    is trusted: envs.episode.ReferenceRuns reads a file only when its key is the run's own and its
    curve whole, and computes it again otherwise."""
    from trainers.atomic_files import write_bytes_atomic

    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    try:
        for f in sorted(src.iterdir()):
            if f.suffix == ".json" and f.is_file() and not f.is_symlink() and not (dest / f.name).exists():
                write_bytes_atomic(dest / f.name, f.read_bytes())
                copied += 1
    except OSError as err:
        raise ConfigError(f"--reference-runs-from: {src}: cannot be read ({err.strerror or err})") from None
    return copied


def _write_curve(path: Path, curve: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CURVE_FIELDS)
    w.writeheader()
    w.writerows(curve)
    write_text_atomic(path, buf.getvalue())


def warm_start(model, venv, cfg: InstanceSetConfig, opts: TrainingOptions, hp: dict, dropped: list) -> dict:
    """Imitation before PPO: noisy-expert episodes on the training instances, then the policy's
    mean action and value fitted to them (agents/learners/imitation.py)."""
    import mlflow

    from agents.learners import imitation
    from trainers.progress import progress

    targets = imitation.expert_targets(opts.imitate, cfg)
    bar = progress(total=opts.imitation_episodes, desc="imitation episodes", unit="episode")

    def on_step(n: int, infos: list[dict]) -> None:
        for info in infos:
            if "dropped" in info:
                dropped.append({"timesteps": 0, "reason": info["dropped"], "phase": "imitation"})
            elif "episode_log" in info:
                bar.update(1)

    t0 = time.time()
    demos = imitation.collect(venv, targets, cfg, opts.imitation_episodes, noise=0.5, gamma=hp["gamma"],
                              seed=opts.seed, on_step=on_step)
    bar.close()
    fit = imitation.pretrain(model, demos, venv.normalize_obs, seed=opts.seed)
    record = {"source": str(opts.imitate), "targets": targets, "decisions": len(demos.actions),
              "seconds": round(time.time() - t0, 1), **fit}
    mlflow.log_params({f"imitation_{k}": v for k, v in record.items() if k not in ("targets",)})
    mlflow.log_dict(record, "imitation.json")
    return record


@dataclass
class TrainingResult:
    meta: dict[str, Any]  # what agent.json holds
    sessions: Any = None  # the in-process engines by depth, if any, for the final held-out evaluation to reuse


def read_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's state.json (what --resume continues from)."""
    import json

    return json.loads((folder / "checkpoint" / STATE_FILE).read_text())


@dataclass
class Learner:
    """The learner as the run drives it: the model, its deterministic action on a raw
    observation, and how its deployable (tag None) or resumable (tag = step) files are saved."""

    model: Any
    venv: Any  # the VecEnv it learns on (VecNormalize-wrapped for SB3 learners)
    act: Callable[[np.ndarray], Any]
    save: Callable[[Path, Optional[str]], dict]


def build_learner(opts: TrainingOptions, venv, hp: dict, state: dict, ckpt: Path, folder: Path,
                  features: tuple[str, ...]) -> Learner:
    """A new learner, or the checkpoint's one continued (tensors only: nothing is unpickled)."""
    if opts.algo == "qlearning":
        from agents.learners.qlearning import QLearningAgent, QLearningConfig

        q = (QLearningAgent.load(ckpt / state["files"]["qtable"], features) if opts.resume
             else QLearningAgent(venv.action_space.n, QLearningConfig(**hp), seed=opts.seed, features=features))

        def save_table(dest: Path, tag: Optional[str]) -> dict:
            name = "qtable.json" if tag is None else f"qtable-{tag}.json"
            q.save(dest / name)
            return {"model_file": name, "obs_normalization": None} if tag is None else {"qtable": name}

        return Learner(q, venv, lambda obs: q.predict(obs, deterministic=True), save_table)
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(venv, norm_obs=True, norm_reward=False, clip_obs=10.0, gamma=hp["gamma"])
    if opts.resume:
        ObsNormalization.load(ckpt / state["files"]["obs_normalization"]).apply_to(venv)
        # DQN's buffer; a checkpoint from before buffers were kept has none
        replay = state["files"].get("replay_buffer") if opts.algo == "dqn" else None
        model = resume_model(opts.algo, venv, opts.seed, hp, ckpt / state["files"]["model"], int(state["num_timesteps"]),
                             ckpt / replay if replay else None)
    else:
        model = build_model(opts.algo, venv, opts.seed, hp)
    model.set_logger(mlflow_sb3_logger(folder, int(state["num_timesteps"]) if opts.resume else None))

    def act(obs: np.ndarray):
        a, _ = model.predict(venv.normalize_obs(np.asarray(obs, dtype=np.float32)[None]), deterministic=True)
        return a[0]

    def save(dest: Path, tag: Optional[str]) -> dict:
        return save_policy(dest, model, venv) if tag is None else save_checkpoint(dest, model, venv, tag)

    return Learner(model, venv, act, save)


def log_run_params(cfg: InstanceSetConfig, opts: TrainingOptions, hp: dict) -> None:
    import mlflow

    mlflow.log_params({"algo": opts.algo, "instance_set": cfg.name, "total_decisions": opts.decisions,
                       "n_envs": opts.n_envs, "seed": opts.seed, "backend": opts.backend})
    mlflow.log_params(mlflow_tracking.flat_params("learner", hp))
    mlflow.log_params(mlflow_tracking.flat_params("env", cfg.model_dump(mode="json", exclude={"train", "heldout"})))
    mlflow.log_param("train_instances", ",".join(i.name for i in cfg.train))
    mlflow.log_param("heldout_instances", ",".join(i.name for i in cfg.heldout))


def run_training(cfg: InstanceSetConfig, opts: TrainingOptions, folder: Path) -> TrainingResult:
    """Learn a controller into ``folder``, inside the active MLflow run (the caller owns it). The
    final held-out evaluation is the caller's too (``agents.experiments.heldout``)."""
    import mlflow
    from stable_baselines3.common.vec_env import VecMonitor

    from agents.parallel.vec_envs import in_process_sessions, make_vec_env

    ckpt = folder / "checkpoint"
    state = read_state(folder) if opts.resume else {}
    curve: list[dict] = state.get("curve", [])
    validation: list = [tuple(v) for v in state.get("validation", [])]
    dropped: list[dict] = state.get("dropped", [])
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / RUN_MARKER, opts.command + "\n")  # a kill before the first checkpoint: see RUN_MARKER
    run = mlflow.active_run()
    t_start = time.time()
    # a resumed run keeps the learner it started with (PPO's rollout length, DQN's schedule)
    hp = state.get("learner_hparams") or learner_hparams(opts.algo, opts.n_envs, opts.decisions,
                                                         imitation=opts.imitate is not None, control=cfg.control)
    if state.get("mlflow_run_id") != run.info.run_id:
        log_run_params(cfg, opts, hp)
    save_env_config(folder, cfg)

    seed = opts.seed + len(curve)  # a resumed run does not replay the episodes it already learned from
    # the paired reward's recipe runs live in the agent folder: computed once, kept across --resume
    references = str(folder / REFERENCE_RUNS) if cfg.control.reward == "paired" else None
    if references and opts.reference_runs_from is not None:
        copied = seed_reference_runs(opts.reference_runs_from, Path(references))
        print(f"reference runs: {copied} taken from {opts.reference_runs_from} (each checked by its key when used)",
              file=sys.stderr)
    raw = make_vec_env(cfg, opts.n_envs, opts.backend, opts.ray_address, seed=seed, max_restarts=opts.max_restarts,
                       reference_folder=references)
    sessions = in_process_sessions(raw)
    try:
        learner = build_learner(opts, VecMonitor(raw), hp, state, ckpt, folder, feature_names(cfg.control.features))
    except BaseException:  # a checkpoint the learner refuses: its envs' workers go too
        raw.close()
        raise
    model, venv = learner.model, learner.venv
    venv.seed(seed)  # after the learner is built: SB3 seeds its env with the learner's seed on construction
    imitation: Optional[dict] = state.get("imitation")

    def checkpoint() -> None:
        """The files first, under step-tagged names; then state.json, which points at them, in one
        atomic write; then the files it no longer points at. A crash at any moment leaves a whole
        checkpoint."""
        ckpt.mkdir(exist_ok=True)
        learned = learned_decisions(model, monitor.learned)
        files = learner.save(ckpt, f"{learned:08d}")
        write_json_atomic(ckpt / STATE_FILE, {
            "num_timesteps": learned, "files": files, "curve": [r for r in curve if r["timesteps"] <= learned],
            "validation": validation, "dropped": dropped, "mlflow_run_id": run.info.run_id, "algo": opts.algo,
            "learner_hparams": hp, "imitation": imitation,
            "decisions_not_learned": int(model.num_timesteps) - learned}, indent=None)
        for f in ckpt.iterdir():
            if f.name != STATE_FILE and f.name not in files.values():
                f.unlink(missing_ok=True)

    warm = opts.imitate is not None and imitation is None
    if warm and int(state.get("num_timesteps", 0)) > 0:  # train_agent refuses this first, with the reason
        raise RuntimeError("a warm start would overwrite a policy that has already learned")
    validator = HeldoutValidator(cfg, learner.act, sessions) if opts.validate_every and cfg.heldout else None
    start = int(state.get("num_timesteps", 0))
    monitor = TrainingMonitor(opts.decisions, start, checkpoint, opts.checkpoint_every, validator,
                              opts.validate_every, curve, validation, dropped)
    try:
        if warm:
            imitation = warm_start(model, venv, cfg, opts, hp, dropped)
            checkpoint()  # a crash from here on resumes from the warm-started policy
        if opts.algo == "qlearning":
            model.learn(venv, opts.decisions - start, on_step=lambda n, r, infos: monitor.on_step(n, infos))
        else:
            model.learn(total_timesteps=opts.decisions - start, callback=sb3_callback(monitor),
                        reset_num_timesteps=not opts.resume)
        monitor.learned = int(model.num_timesteps)  # the last rollout learned
    except BaseException:
        monitor.close()
        if learned_decisions(model, monitor.learned) > 0 or imitation is not None:
            checkpoint()  # a crash or Ctrl-C keeps everything learned so far: rerun with --resume
        # else nothing was learned: the run marker alone stays, and the next run clears the folder
        mlflow.set_tag("status", "interrupted: resume with --resume")
        venv.close()
        raise
    monitor.close()
    checkpoint()
    meta = save_agent(folder, cfg, opts, learner, curve, validation, dropped, hp, imitation,
                      round(time.time() - t_start, 1), run.info.run_id)
    venv.close()
    return TrainingResult(meta, sessions)


def save_agent(folder: Path, cfg: InstanceSetConfig, opts: TrainingOptions, learner: Learner, curve: list[dict],
               validation: list, dropped: list, hp: dict, imitation: Optional[dict], seconds: float,
               run_id: str) -> dict[str, Any]:
    """The agent folder's deployable files, curves and plots, and agent.json last (what makes it an agent folder)."""
    import mlflow

    from agents.reporting.plots import learner_diagnostics, learning_curve

    files = learner.save(folder, None)
    _write_curve(folder / "training_curve.csv", curve)
    learning_curve([r["timesteps"] for r in curve], [r["return"] for r in curve], folder / "learning_curve.png",
                   f"{opts.algo.upper()} on {cfg.name}", validation)
    meta = {
        "name": folder.name, "algo": opts.algo, **files,
        "action_map": action_map_for(cfg).describe(),
        "observation": list(feature_names(cfg.control.features)),
        "env_config": "env_config.yaml", "instance_set": cfg.name,
        "training_instances": [i.name for i in cfg.train], "heldout_instances": [i.name for i in cfg.heldout],
        "total_timesteps": int(learner.model.num_timesteps), "seed": opts.seed, "n_envs": opts.n_envs,
        "backend": opts.backend, "learner_hparams": hp, "training_curve": "training_curve.csv",
        "learning_curve": "learning_curve.png", "heldout_validation": validation, "dropped_episodes": dropped,
        "training_seconds": seconds, "mlflow_run_id": run_id,
        "command": opts.command, "imitation": imitation, **opts.extra_meta,
    }
    diag = learner_diagnostics(folder / "learner_progress.csv", folder / "learner_diagnostics.png",
                               f"{opts.algo.upper()} on {cfg.name}: the learner's own curves")
    if diag is not None:
        meta["learner_diagnostics"] = diag.name
    write_agent_json(folder, meta)
    (folder / RUN_MARKER).unlink(missing_ok=True)  # a whole agent now: the marker has done its job
    mlflow.log_artifact(str(folder / "learning_curve.png"), artifact_path="plots")
    if diag is not None:
        mlflow.log_artifact(str(diag), artifact_path="plots")
    return meta
