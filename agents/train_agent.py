"""Learn a hyperparameter controller on cheap fine-tuning runs, then test it on held-out ones.

    python -m agents.train_agent                      # PPO on configs/tiny.yaml
    python -m agents.train_agent --algo dqn --decisions 800
    python -m agents.train_agent --algo qlearning --config configs/tiny.yaml
    python -m agents.train_agent --resume             # continue the last run of that name

A decision is one environment step: a real DeepSpeed training interval. The agent folder ends up
holding what python -m agents.tune needs, and a held-out table against the default recipe and no
control, on the test split. Everything is recorded in MLflow.

The agent folder is <out>/<name>. A finished agent there (one with agent.json) is replaced; a
folder that is not an agent folder is never touched, and nothing outside --out is.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from trainers.cli import CommandParser, nonnegative_int, plain_name, positive_int, run_command  # noqa: E402
from trainers.config import REPO_ROOT, ConfigError, load_config  # noqa: E402


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.train_agent", description=__doc__)
    g = p.add_argument_group("what to learn")
    g.add_argument("--algo", choices=["ppo", "dqn", "qlearning"], default="ppo", help="learner (default: ppo)")
    g.add_argument("--config", default="tiny", help="instance set: a name in configs/ or a YAML path (default: tiny)")
    g.add_argument("--decisions", type=nonnegative_int, default=None,
                   help="environment steps (decisions) to learn from (default: 480; 0 with --imitate: the "
                        "imitation-only policy, to measure what the learner adds)")
    g.add_argument("--total-steps", dest="decisions", type=nonnegative_int, help=argparse.SUPPRESS)  # the old name
    g.add_argument("--seed", type=int, default=0, help="seed of the learner and the environments (default: 0)")
    g.add_argument("--imitate", default=None, metavar="LR_GRID_JSON|PROBE_JSON|recipe",
                   help="PPO only: first imitate each training instance's best lr: from an lr grid (agents.headroom "
                        "--lr-grid), or for anchored residual configs the recipe's ('recipe') or a --residual-probe's")
    g.add_argument("--reference-runs-from", default=None, metavar="AGENT_FOLDER",
                   help="paired reward: start from another agent's cached recipe runs (reference_runs/); each is "
                        "used only where its key and stack are this run's")
    g.add_argument("--imitation-episodes", type=positive_int, default=24, help="noisy-expert episodes to imitate (default: 24)")
    g = p.add_argument_group("where it runs")
    g.add_argument("--n-envs", type=positive_int, default=1, help="parallel fine-tuning episodes (default: 1)")
    g.add_argument("--ray", action="store_true", help="run the environments as Ray actors (one CPU or GPU each)")
    g.add_argument("--ray-address", default=None, help="join this Ray cluster, not a private one (RAY_ADDRESS is not read)")
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
                   help="held-out validation every N decisions during training (default: a quarter of the run; 0 = never)")
    g.add_argument("--checkpoint-every", type=nonnegative_int, default=60,
                   help="checkpoint every N decisions (default: 60; 0 = only at the end)")
    g.add_argument("--resume", action="store_true", help="continue from the agent folder's last checkpoint")
    g.add_argument("--no-heldout", action="store_true", help="skip the final held-out evaluation")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def prepare(args: argparse.Namespace):
    """Every check, before anything is written or deleted; returns the config, folder and options."""
    from agents.learners.agent_folder import check_agent_folder
    from agents.learners.sb3_setup import DEFAULT_DECISIONS, action_mode_for, resumed_rollouts, whole_rollouts
    from agents.learners.imitation import check_warm_start
    from agents.learners.training_run import TrainingOptions, read_state, reference_runs_source
    from agents.reporting.mlflow_tracking import check_tracking_uri
    from trainers.atomic_files import check_writable_folder
    from trainers.models import check_model_limits

    cfg = load_config(args.config, {"action": {"mode": action_mode_for(args.algo)}})
    if args.subproc and (args.ray or args.ray_address):
        raise ConfigError("--subproc and --ray / --ray-address choose different backends: give one")
    if not args.no_heldout and not cfg.heldout:
        raise ConfigError(f"instance set {cfg.name!r} has no held-out instances: add some under 'heldout', "
                          "or pass --no-heldout")
    name = args.name or f"{args.algo}-{cfg.name}-seed{args.seed}"
    try:  # a name built from a config's name must be plain too
        plain_name(name)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"agent folder name {name!r} (from the config's name): {err}") from None
    check_tracking_uri(args.tracking_uri)
    check_model_limits(cfg.session)  # a window the model cannot read stops here, before any folder or run
    if args.decisions == 0 and args.imitate is None:
        raise ConfigError("--decisions 0 learns nothing: it is only for --imitate (the imitation-only policy)")
    if args.imitate is not None:  # a bad file stops here, before anything is written
        check_warm_start(Path(args.imitate), cfg, args.algo, bool(args.ray or args.ray_address))
    reference_runs_from = reference_runs_source(Path(args.reference_runs_from), cfg) if args.reference_runs_from else None
    check_writable_folder(Path(args.out), "--out")  # a folder, and one that takes files, before any training
    folder = Path(args.out) / name
    check_agent_folder(folder, args.resume, args.algo, imitate=args.imitate is not None)
    asked = DEFAULT_DECISIONS[args.algo] if args.decisions is None else args.decisions
    decisions = resumed_rollouts(args.algo, read_state(folder), args.n_envs, asked) if args.resume \
        else whole_rollouts(args.algo, args.n_envs, asked)
    opts = TrainingOptions(
        algo=args.algo, decisions=decisions, seed=args.seed, n_envs=args.n_envs,
        backend="ray" if (args.ray or args.ray_address) else ("subproc" if args.subproc else "inprocess"),
        ray_address=args.ray_address, max_restarts=args.max_restarts, tracking_uri=args.tracking_uri,
        validate_every=args.validate_every if args.validate_every is not None else max(decisions // 4, 1),
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        imitate=Path(args.imitate) if args.imitate else None, imitation_episodes=args.imitation_episodes,
        reference_runs_from=reference_runs_from,
        command="python -m agents.train_agent " + " ".join(sys.argv[1:]))
    return cfg, folder, opts


def train(args: argparse.Namespace) -> Path:
    from agents.experiments.agent_training import train_and_evaluate
    from agents.reporting.heldout_report import verdict_lines
    from agents.reporting.mlflow_tracking import ui_command

    cfg, folder, opts = prepare(args)
    summary = train_and_evaluate(cfg, opts, folder, None if args.no_heldout else args.eval_seeds,
                                 {"workers": args.eval_workers or args.n_envs})
    print(f"\nagent folder: {folder}; review the runs in MLflow: {ui_command(args.tracking_uri)}")
    if summary is not None:
        print(f"held-out table: {folder / 'heldout.md'}")
        print("\n".join(verdict_lines(folder, summary)))
    return folder


def main(argv: Optional[list[str]] = None) -> None:
    from agents.experiments.agent_training import RunStopped

    def body(args: argparse.Namespace) -> Path:
        try:
            return train(args)
        except RunStopped as err:  # not bad input: the run stopped, and says what it kept
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(130 if err.interrupted else 1) from None

    run_command(build_parser(), body, argv)


if __name__ == "__main__":
    main()
