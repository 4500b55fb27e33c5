"""Learn a hyperparameter controller on cheap fine-tuning runs, then test it on held-out ones.

    python -m agents.train_agent                      # PPO on configs/tiny.yaml, 480 decisions
    python -m agents.train_agent --algo dqn --total-steps 800
    python -m agents.train_agent --algo qlearning --config configs/tiny.yaml
    python -m agents.train_agent --resume             # continue the last run of that name

Each environment step is a real DeepSpeed training interval; the learners are sized for
hundreds of decisions, not millions. At the end the agent folder holds everything needed to
use the controller elsewhere (python -m agents.tune), and the held-out table compares it with
the default recipe on the test split. Everything is recorded in MLflow.

The agent folder is <out>/<name>. A finished agent there (one with agent.json) is replaced; a
folder that is not an agent folder is never touched, and nothing outside --out is.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from trainers.cli import CommandParser, nonnegative_int, plain_name, positive_int, run_command  # noqa: E402
from trainers.config import (REPO_ROOT, ConfigError, InstanceSetConfig, load_config,  # noqa: E402
                             read_structured_file)


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.train_agent", description=__doc__)
    g = p.add_argument_group("what to learn")
    g.add_argument("--algo", choices=["ppo", "dqn", "qlearning"], default="ppo", help="learner (default: ppo)")
    g.add_argument("--config", default="tiny", help="instance set: a name in configs/ or a YAML path (default: tiny)")
    g.add_argument("--total-steps", type=nonnegative_int, default=None,
                   help="environment steps (decisions) to learn from (default: 480; 0 with --imitate: the "
                        "imitation-only policy, to measure what the learner adds)")
    g.add_argument("--seed", type=int, default=0, help="seed of the learner and the environments (default: 0)")
    g.add_argument("--imitate", default=None, metavar="LR_GRID_JSON",
                   help="PPO only: before learning, imitate the best constant lr per training instance from this "
                        "lr-grid result (python -m agents.headroom --lr-grid), then learn on from there")
    g.add_argument("--imitation-episodes", type=positive_int, default=24,
                   help="noisy-expert episodes to imitate (default: 24)")
    g = p.add_argument_group("where it runs")
    g.add_argument("--n-envs", type=positive_int, default=1, help="parallel fine-tuning episodes (default: 1)")
    g.add_argument("--ray", action="store_true", help="run the environments as Ray actors (one CPU or GPU each)")
    g.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting a private one")
    g.add_argument("--max-restarts", type=nonnegative_int, default=3,
                   help="restarts allowed per Ray worker before the run stops (default: 3)")
    g.add_argument("--subproc", action="store_true", help="without Ray: one subprocess per environment")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default=str(REPO_ROOT / "results" / "agents"), help="parent folder of agent folders")
    g.add_argument("--name", type=plain_name, default=None,
                   help="agent folder name, a plain name inside --out (default: <algo>-<config>-seed<seed>)")
    g.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    g.add_argument("--eval-seeds", type=positive_int, default=3, help="seeds per held-out instance at the end (default: 3)")
    g.add_argument("--eval-workers", type=positive_int, default=None,
                   help="processes for the final held-out evaluation (default: --n-envs; the results are the same)")
    g.add_argument("--validate-every", type=nonnegative_int, default=None,
                   help="held-out validation every N steps during training (default: a quarter of the run; 0 = never)")
    g.add_argument("--checkpoint-every", type=nonnegative_int, default=60,
                   help="checkpoint every N steps (default: 60; 0 = only at the end)")
    g.add_argument("--resume", action="store_true", help="continue from the agent folder's last checkpoint")
    g.add_argument("--no-heldout", action="store_true", help="skip the final held-out evaluation")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _check_folder(folder: Path, resume: bool, algo: str, imitate: bool = False) -> None:
    """Refuse anything that would touch a folder that is not this command's to touch."""
    from agents.learners.agent_folder import is_agent_folder
    from agents.learners.training_run import STATE_FILE

    state = folder / "checkpoint" / STATE_FILE
    if resume:
        if not state.is_file():
            raise ConfigError(f"--resume: {state} not found; nothing to resume")
        saved = read_structured_file(state)
        if not isinstance(saved, dict) or saved.get("algo") != algo or not isinstance(saved.get("files"), dict):
            got = saved.get("algo") if isinstance(saved, dict) else None
            raise ConfigError(f"--resume: {state} is a checkpoint of --algo {got}, not {algo}"
                              if got else f"--resume: {state} is not a checkpoint this version can continue")
        if imitate and not saved.get("imitation") and int(saved.get("num_timesteps", 0)) > 0:
            raise ConfigError(f"--imitate: {state} has learned {saved['num_timesteps']} decisions without imitation; "
                              "a warm start now would overwrite them (resume without --imitate)")
        return
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ConfigError(f"{folder}: exists and is not a folder; choose another --name")
    if folder.is_dir() and any(folder.iterdir()) and not is_agent_folder(folder):
        if state.is_file():
            raise ConfigError(f"{folder}: holds an unfinished training run; continue it with --resume, "
                              "or choose another --name")
        raise ConfigError(f"{folder}: exists and is not an agent folder (no agent.json); "
                          "choose another --name or --out")


def _learned_anything(state: Path) -> bool:
    """Whether a checkpoint holds learning worth keeping: decisions, or an imitation warm start."""
    try:
        saved = read_structured_file(state)
        return int(saved["num_timesteps"]) > 0 or bool(saved.get("imitation"))
    except (ConfigError, KeyError, TypeError, ValueError):
        return False


def prepare(args: argparse.Namespace) -> tuple[InstanceSetConfig, Path]:
    """Every check, before anything is written or deleted."""
    from agents.learners.sb3_setup import action_mode_for
    from agents.reporting.mlflow_tracking import check_tracking_uri

    cfg = load_config(args.config, {"action": {"mode": action_mode_for(args.algo)}})
    if args.subproc and (args.ray or args.ray_address):
        raise ConfigError("--subproc and --ray / --ray-address choose different backends: give one")
    if not args.no_heldout and not cfg.heldout:
        raise ConfigError(f"instance set {cfg.name!r} has no held-out instances: add some under 'heldout', "
                          "or pass --no-heldout")
    name = args.name or f"{args.algo}-{cfg.name}-seed{args.seed}"
    try:
        plain_name(name)  # a name built from a config's name must be plain too
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"agent folder name {name!r} (from the config's name): {err}") from None
    check_tracking_uri(args.tracking_uri)
    if args.total_steps == 0 and args.imitate is None:
        raise ConfigError("--total-steps 0 learns nothing: it is only for --imitate (the imitation-only policy)")
    if args.imitate is not None:
        if args.algo != "ppo":
            raise ConfigError(f"--imitate warm-starts PPO's policy; --algo {args.algo} has none to warm-start")
        if args.ray or args.ray_address:
            raise ConfigError("--imitate runs on the in-process or --subproc backend, not --ray")
        from agents.learners.imitation import expert_targets

        expert_targets(Path(args.imitate), cfg)  # a bad file stops here, before anything is written
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    folder = out / name
    _check_folder(folder, args.resume, args.algo, imitate=args.imitate is not None)
    return cfg, folder


def train(args: argparse.Namespace) -> Path:
    from agents.learners.sb3_setup import DEFAULT_DECISIONS
    from agents.learners.training_run import STATE_FILE, TrainingOptions, run_training

    cfg, folder = prepare(args)
    total = DEFAULT_DECISIONS[args.algo] if args.total_steps is None else args.total_steps
    previous = None
    if not args.resume and folder.exists() and any(folder.iterdir()):
        # kept aside until the new agent is saved: a run that fails leaves the earlier agent there
        previous = folder.with_name(f".{folder.name}.previous")
        if previous.exists():
            shutil.rmtree(previous)
        folder.rename(previous)
        print(f"replacing the earlier agent in {folder} (--name keeps both, --resume continues it); until this "
              f"run has saved its agent the earlier one waits in {previous}", file=sys.stderr)
    opts = TrainingOptions(
        algo=args.algo, total_steps=total, seed=args.seed, n_envs=args.n_envs,
        backend="ray" if (args.ray or args.ray_address) else ("subproc" if args.subproc else "inprocess"),
        ray_address=args.ray_address, max_restarts=args.max_restarts, tracking_uri=args.tracking_uri,
        validate_every=args.validate_every if args.validate_every is not None else max(total // 4, 1),
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        imitate=Path(args.imitate) if args.imitate else None, imitation_episodes=args.imitation_episodes,
        command="python -m agents.train_agent " + " ".join(sys.argv[1:]))
    try:
        result = run_training(cfg, opts, folder)
    except BaseException:
        if previous is not None and not _learned_anything(folder / "checkpoint" / STATE_FILE):
            shutil.rmtree(folder, ignore_errors=True)  # the new run learned nothing worth keeping
            previous.rename(folder)
            print(f"the earlier agent is back in {folder}", file=sys.stderr)
        raise
    if previous is not None:
        shutil.rmtree(previous)
    import mlflow

    from agents.reporting import mlflow_tracking

    if not args.no_heldout:
        from agents.evaluation.heldout import evaluate_heldout
        from agents.learners.agent_folder import Controller
        from agents.reporting.heldout_report import heldout_markdown, write_heldout_report
        from envs.finetune_env import FineTuneEnv

        workers = args.eval_workers or args.n_envs
        if workers > 1:
            from agents.evaluation.heldout import evaluate_heldout_parallel

            runs = evaluate_heldout_parallel(str(folder), list(range(args.eval_seeds)), workers)
        else:
            env = FineTuneEnv(cfg, split="heldout", evaluate_test=True, session=result.sessions)
            runs = evaluate_heldout(Controller(folder), list(range(args.eval_seeds)), env=env, cfg=cfg)
        summary = write_heldout_report(folder, runs, result.meta["command"])
        print("\n" + heldout_markdown(summary, f"Held-out evaluation of {folder.name}", result.meta["command"]))
    mlflow.log_artifacts(str(folder), artifact_path="agent")
    mlflow.end_run()
    print(f"\nagent folder: {folder}")
    if not args.no_heldout:
        print(f"held-out table: {folder / 'heldout.md'}")
    print(f"review the runs in MLflow: {mlflow_tracking.ui_command(args.tracking_uri)}")
    return folder


def main(argv: Optional[list[str]] = None) -> None:
    from agents.parallel.ray_vec_env import WorkerFailure

    def body(args: argparse.Namespace) -> Path:
        try:
            return train(args)
        except WorkerFailure as err:  # not bad input: the run stopped; its checkpoint stays
            print(f"error: {err}; the run is checkpointed: fix the cause, then rerun with --resume", file=sys.stderr)
            raise SystemExit(1) from None

    run_command(build_parser(), body, argv)


if __name__ == "__main__":
    main()
