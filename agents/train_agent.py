"""Learn a hyperparameter controller on cheap fine-tuning runs, then test it on held-out ones.

    python -m agents.train_agent                      # PPO on configs/tiny.yaml, 480 decisions
    python -m agents.train_agent --algo dqn --total-steps 800
    python -m agents.train_agent --algo qlearning --config configs/tiny.yaml
    python -m agents.train_agent --resume             # continue the last run of that name

Each environment step is a real DeepSpeed training interval; the learners are sized for
hundreds of decisions, not millions. At the end the agent folder holds everything needed to
use the controller elsewhere (python -m agents.tune), and the held-out table compares it with
the default recipe on the test split. Everything is recorded in MLflow.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np

from trainers.config import REPO_ROOT, ConfigError, InstanceSetConfig, load_config

DEFAULT_STEPS = {"ppo": 480, "dqn": 480, "qlearning": 480}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agents.train_agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to learn")
    g.add_argument("--algo", choices=["ppo", "dqn", "qlearning"], default="ppo", help="learner (default: ppo)")
    g.add_argument("--config", default="tiny", help="instance set: a name in configs/ or a YAML path (default: tiny)")
    g.add_argument("--total-steps", type=int, default=None,
                   help="environment steps (decisions) to learn from (default: 480)")
    g.add_argument("--seed", type=int, default=0, help="seed of the learner and the environments (default: 0)")
    g = p.add_argument_group("where it runs")
    g.add_argument("--n-envs", type=int, default=1, help="parallel fine-tuning episodes (default: 1)")
    g.add_argument("--ray", action="store_true", help="run the environments as Ray actors (one CPU or GPU each)")
    g.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a private one")
    g.add_argument("--subproc", action="store_true", help="without Ray: one subprocess per environment")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default=str(REPO_ROOT / "results" / "agents"), help="parent folder of agent folders")
    g.add_argument("--name", default=None, help="agent folder name (default: <algo>-<config>-seed<seed>)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    g.add_argument("--eval-seeds", type=int, default=3, help="seeds per held-out instance at the end (default: 3)")
    g.add_argument("--validate-every", type=int, default=None,
                   help="held-out validation every N steps during training (default: a quarter of the run; 0 = never)")
    g.add_argument("--checkpoint-every", type=int, default=60, help="checkpoint every N steps (default: 60)")
    g.add_argument("--resume", action="store_true", help="continue from the agent folder's last checkpoint")
    g.add_argument("--no-heldout", action="store_true", help="skip the final held-out evaluation")
    return p.parse_args(argv)


# ------------------------------------------------------------------ learners
def learner_hparams(algo: str, n_envs: int, total: int) -> dict[str, Any]:
    """Sized for expensive steps: updates every few dozen decisions, not thousands."""
    if algo == "ppo":
        n_steps = max(4, min(48, total) // n_envs)  # a rollout never outgrows the whole run
        batch = n_steps * n_envs if n_steps * n_envs <= 64 else 48
        return {"n_steps": n_steps, "batch_size": batch, "n_epochs": 10, "learning_rate": 3e-4,
                "gamma": 0.95, "gae_lambda": 0.9, "ent_coef": 0.003, "clip_range": 0.2,
                "policy_kwargs": {"net_arch": [64, 64], "log_std_init": -0.5}}
    if algo == "dqn":
        return {"learning_starts": min(64, total // 4), "buffer_size": 20_000, "batch_size": 32, "train_freq": 1,
                "gradient_steps": 2, "target_update_interval": 50, "exploration_fraction": 0.5,
                "exploration_final_eps": 0.05, "learning_rate": 1e-3, "gamma": 0.95,
                "policy_kwargs": {"net_arch": [64, 64]}}
    from dataclasses import asdict

    from agents.qlearning import QLearningConfig

    return asdict(QLearningConfig())


def action_mode_for(algo: str) -> str:
    return "box" if algo == "ppo" else "discrete"


# ------------------------------------------------------------------ monitoring
class TrainingMonitor:
    """The one place that sees every environment step: progress bar with time left, the
    training curve, MLflow metrics, checkpoints and periodic held-out validation."""

    def __init__(self, total: int, start: int, folder: Path, checkpoint: Callable[[], None], checkpoint_every: int,
                 validate: Optional[Callable[[], float]], validate_every: int, curve: list[dict]) -> None:
        from tqdm.auto import tqdm

        self.total, self.folder, self.curve = total, folder, curve
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.validate, self.validate_every = validate, validate_every
        self.bar = tqdm(total=total, initial=start, desc="learning the controller", unit="decision", smoothing=0.05)
        self.last = start
        self.validation: list[tuple[int, float]] = []
        self.dropped: list[dict] = []

    def on_step(self, num_timesteps: int, infos: list[dict]) -> bool:
        import mlflow

        self.bar.update(num_timesteps - self.last)
        for info in infos:
            if "dropped" in info:  # a Ray worker died mid-episode: the record says so
                self.dropped.append({"timesteps": num_timesteps, "reason": info["dropped"]})
                mlflow.log_metric("dropped_episodes", len(self.dropped), step=num_timesteps)
                mlflow.set_tag("dropped_episode_reasons", "; ".join(d["reason"] for d in self.dropped)[-4000:])
                self.bar.write(f"warning: {info['dropped']}")
            log = info.get("episode_log")
            if log is None:
                continue
            ret = float(info["episode"]["r"]) if "episode" in info else float("nan")
            final = log["eval_curve"][-1][1]
            improvement = (log["initial_eval_loss"] - final) / log["initial_eval_loss"] if math.isfinite(final) else -1.0
            row = {"timesteps": num_timesteps, "instance": log["instance"], "return": ret,
                   "improvement": improvement, "diverged": log["diverged"], "final_lr": log["schedule"][-1]["lr"]}
            self.curve.append(row)
            mlflow.log_metrics({"episode_return": ret, "episode_improvement": improvement,
                                f"improvement/{log['instance']}": improvement}, step=num_timesteps)
            recent = self.curve[-20:]
            self.bar.set_postfix(ret=f"{np.mean([r['return'] for r in recent]):+.3f}")
        crossed = lambda every: every > 0 and num_timesteps // every > self.last // every  # noqa: E731
        if crossed(self.checkpoint_every):
            self.checkpoint()
        if self.validate is not None and crossed(self.validate_every):
            v = self.validate()
            self.validation.append((num_timesteps, v))
            mlflow.log_metric("heldout_validation_return", v, step=num_timesteps)
        self.last = num_timesteps
        return True

    def close(self) -> None:
        self.bar.close()


def sb3_callback(monitor: TrainingMonitor):
    from stable_baselines3.common.callbacks import BaseCallback

    class _Callback(BaseCallback):
        def _on_step(self) -> bool:
            return monitor.on_step(self.num_timesteps, self.locals["infos"])

    return _Callback()


def mlflow_sb3_logger(folder: Path):
    """SB3's logger with an extra output that sends every learner metric to MLflow."""
    import mlflow
    from stable_baselines3.common.logger import CSVOutputFormat, KVWriter, Logger

    class MLflowOutputFormat(KVWriter):
        def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
            metrics = {k.replace("/", "_"): float(v) for k, v in key_values.items()
                       if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}
            if metrics:
                mlflow.log_metrics(metrics, step=step)

    return Logger(str(folder), [CSVOutputFormat(str(folder / "learner_progress.csv")), MLflowOutputFormat()])


class HeldoutValidator:
    """Deterministic policy on each held-out instance (validation return, one seed): how the
    controller generalises while it learns. Borrows an in-process engine when there is one,
    snapshotting it so the training episode in flight resumes untouched."""

    def __init__(self, cfg: InstanceSetConfig, act: Callable[[np.ndarray], Any], session=None) -> None:
        from envs.finetune_env import FineTuneEnv

        self.env = FineTuneEnv(cfg, split="heldout", session=session)
        self.act, self.shared = act, session is not None

    def __call__(self) -> float:
        snap = self.env.session.snapshot() if self.shared else None
        returns = []
        for inst in self.env.instances:
            obs, _ = self.env.reset(seed=10_000, options={"instance": inst.name})
            total, done = 0.0, False
            while not done:
                obs, r, term, trunc, _ = self.env.step(self.act(obs))
                total += r
                done = term or trunc
            returns.append(total)
        if snap is not None:
            self.env.session.restore(snap)
        return float(np.mean(returns))


# ------------------------------------------------------------------ the run
def train(args: argparse.Namespace) -> Path:
    import mlflow

    from agents import tracking
    from agents.agent_folder import save_env_config, write_agent_json
    from agents.vec_env import make_vec_env
    from envs.actions import ActionMap

    cfg = load_config(args.config, {"action": {"mode": action_mode_for(args.algo)}})
    total = args.total_steps or DEFAULT_STEPS[args.algo]
    if total <= 0:
        raise ConfigError(f"--total-steps must be positive, got {total}")
    name = args.name or f"{args.algo}-{cfg.name}-seed{args.seed}"
    folder = Path(args.out) / name
    ckpt = folder / "checkpoint"
    state_path = ckpt / "state.json"
    if args.resume and not state_path.exists():
        raise ConfigError(f"--resume: {state_path} not found; nothing to resume")
    if not args.resume and folder.exists():
        print(f"replacing the earlier agent in {folder} (--name keeps both, --resume continues it)", file=sys.stderr)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if args.resume else {}
    curve: list[dict] = state.get("curve", [])

    tracking.setup(args.tracking_uri, "agent-training")
    run = mlflow.start_run(run_id=state.get("mlflow_run_id"), run_name=None if state else name)
    t_start = time.time()
    backend = "ray" if (args.ray or args.ray_address) else ("subproc" if args.subproc else "inprocess")
    hp = learner_hparams(args.algo, args.n_envs, total)
    if not state:
        mlflow.log_params({"algo": args.algo, "instance_set": cfg.name, "total_steps": total, "n_envs": args.n_envs,
                           "seed": args.seed, "backend": backend})
        mlflow.log_params(tracking.flat_params("learner", hp))
        mlflow.log_params(tracking.flat_params("env", cfg.model_dump(mode="json", exclude={"train", "heldout"})))
        mlflow.log_param("train_instances", ",".join(i.name for i in cfg.train))
        mlflow.log_param("heldout_instances", ",".join(i.name for i in cfg.heldout))
    save_env_config(folder, cfg)

    from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

    venv = VecMonitor(make_vec_env(cfg, args.n_envs, backend, args.ray_address))
    venv.seed(args.seed + len(curve))
    in_process_session = venv.venv.envs[0].session if hasattr(venv.venv, "envs") else None

    model: Any
    if args.algo == "qlearning":
        from agents.qlearning import QLearningAgent, QLearningConfig

        model = (QLearningAgent.load(ckpt / "qtable.json") if args.resume
                 else QLearningAgent(venv.action_space.n, QLearningConfig(), seed=args.seed))
        act = lambda obs: model.predict(obs, deterministic=True)  # noqa: E731

        def save_model(dest: Path) -> dict:
            model.save(dest / "qtable.json")
            return {"model_file": "qtable.json", "vecnormalize": None}
    else:
        from stable_baselines3 import DQN, PPO

        cls = PPO if args.algo == "ppo" else DQN
        if args.resume:
            venv = VecNormalize.load(str(ckpt / "vecnormalize.pkl"), venv)
            model = cls.load(ckpt / "model.zip", env=venv, device="cpu")
        else:
            venv = VecNormalize(venv, norm_obs=True, norm_reward=False, clip_obs=10.0, gamma=hp["gamma"])
            model = cls("MlpPolicy", venv, seed=args.seed, device="cpu", verbose=0, **hp)
        model.set_logger(mlflow_sb3_logger(folder))

        def act(obs: np.ndarray):
            a, _ = model.predict(venv.normalize_obs(np.asarray(obs, dtype=np.float32)[None]), deterministic=True)
            return a[0]

        def save_model(dest: Path) -> dict:
            model.save(dest / "model.zip")
            venv.save(str(dest / "vecnormalize.pkl"))
            return {"model_file": "model.zip", "vecnormalize": "vecnormalize.pkl"}

    def checkpoint() -> None:
        ckpt.mkdir(exist_ok=True)
        save_model(ckpt)
        state_path.write_text(json.dumps({"num_timesteps": int(model.num_timesteps), "curve": curve,
                                          "mlflow_run_id": run.info.run_id}))

    validate_every = args.validate_every if args.validate_every is not None else max(total // 4, 1)
    validator = HeldoutValidator(cfg, act, in_process_session) if validate_every and cfg.heldout else None
    start = int(state.get("num_timesteps", 0))
    monitor = TrainingMonitor(total, start, folder, checkpoint, args.checkpoint_every, validator,
                              validate_every, curve)
    try:
        if args.algo == "qlearning":
            model.learn(venv, total - start, on_step=lambda n, r, infos: monitor.on_step(n, infos))
        else:
            model.learn(total_timesteps=total - start, callback=sb3_callback(monitor), reset_num_timesteps=not args.resume)
    except BaseException:
        checkpoint()  # a crash or Ctrl-C keeps everything learned so far: rerun with --resume
        monitor.close()
        mlflow.set_tag("status", "interrupted: resume with --resume")
        mlflow.end_run(status="KILLED")
        raise
    monitor.close()
    checkpoint()
    files = save_model(folder)
    actions = ActionMap(cfg.action, cfg.bounds)
    with open(folder / "training_curve.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["timesteps", "instance", "return", "improvement", "diverged", "final_lr"])
        w.writeheader()
        w.writerows(curve)
    from agents.plots import learning_curve

    learning_curve([r["timesteps"] for r in curve], [r["return"] for r in curve], folder / "learning_curve.png",
                   f"{args.algo.upper()} on {cfg.name}", monitor.validation)
    meta = {
        "name": name, "algo": args.algo, **files,
        "action_map": actions.describe(),
        "observation": list(__import__("envs.features", fromlist=["FEATURE_NAMES"]).FEATURE_NAMES),
        "env_config": "env_config.yaml", "instance_set": cfg.name,
        "training_instances": [i.name for i in cfg.train], "heldout_instances": [i.name for i in cfg.heldout],
        "total_timesteps": int(model.num_timesteps), "seed": args.seed, "n_envs": args.n_envs, "backend": backend,
        "learner_hparams": hp, "training_curve": "training_curve.csv", "learning_curve": "learning_curve.png",
        "heldout_validation": monitor.validation, "dropped_episodes": monitor.dropped, "training_seconds": round(time.time() - t_start, 1),
        "mlflow_run_id": run.info.run_id, "command": "python -m agents.train_agent " + " ".join(sys.argv[1:]),
    }
    write_agent_json(folder, meta)
    venv.close()
    mlflow.log_artifact(str(folder / "learning_curve.png"), artifact_path="plots")

    if not args.no_heldout:
        from agents.agent_folder import Controller
        from agents.evaluate import evaluate_heldout, markdown, write_report

        session = in_process_session if in_process_session is not None else None
        from envs.finetune_env import FineTuneEnv

        env = FineTuneEnv(cfg, split="heldout", evaluate_test=True, session=session)
        runs = evaluate_heldout(Controller(folder), list(range(args.eval_seeds)), env=env, cfg=cfg)
        summary = write_report(folder, runs, meta["command"])
        print("\n" + markdown(summary, f"Held-out evaluation of {name}", meta["command"]))
    mlflow.log_artifacts(str(folder), artifact_path="agent")
    mlflow.end_run()
    print(f"\nagent folder: {folder}")
    print(f"held-out table: {folder / 'heldout.md'}")
    print(f"review the runs in MLflow: {tracking.ui_command(args.tracking_uri)}")
    return folder


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    try:
        train(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
