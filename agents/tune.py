"""Use a learned controller on one new fine-tuning run, for the cost of that run.

    python -m agents.tune --agent results/agents/ppo-tiny-seed0 --instance bbc-tech-lm
    python -m agents.tune --agent results/agents/ppo-tiny-seed0 --data my.jsonl --model path/to/hf_model
    python -m agents.tune --replay results/tuned/<run>/schedule.json      # no agent: same schedule, same losses

Writes <out>/model (the fine-tuned model), metrics.json, and schedule.json: the per-step
hyperparameters that were applied, with the seed and config needed to replay them exactly
(agents/experiments/tuned_run.py).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import yaml

from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import REPO_ROOT, ConfigError, load_config


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.tune", description=__doc__)
    p.add_argument("--agent", help="agent folder from agents.train_agent")
    p.add_argument("--instance", help="a held-out (or any) instance of the agent's instance set")
    p.add_argument("--data", help="your JSONL file of {\"prompt\",\"completion\"} or {\"text\"} records")
    p.add_argument("--model", help="a Hugging Face model folder, or a preset (tiny-gpt, smollm2-135m)")
    p.add_argument("--config", help="a whole instance-set YAML to run in instead of the agent's")
    p.add_argument("--steps", type=positive_int, help="training steps of the run (default: the instance's budget)")
    p.add_argument("--lora-rank", type=positive_int,
                   help="train LoRA adapters (peft) of this rank on the trainable layers instead of their weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    p.add_argument("--replay", help="schedule.json from an earlier run: re-run it exactly, no agent")
    p.add_argument("--out", help="output folder (default: results/tuned/<instance>-<agent or replay>-seed<seed>)")
    p.add_argument("--no-save-model", action="store_true", help="skip writing the fine-tuned model")
    return p


def run(args: argparse.Namespace) -> dict:
    from agents.experiments.tuned_run import read_replay, replay, tuned_run
    from agents.learners.agent_folder import Controller
    from trainers.models import model_path
    from trainers.retarget import with_lora, with_model, with_steps, with_user_data

    t0 = time.time()
    if args.replay:
        rec = read_replay(args.replay)
        return replay(rec, Path(args.out) if args.out else Path(args.replay).parent / "replay", not args.no_save_model)
    if not args.agent:
        raise ConfigError("give --agent (to tune) or --replay (to re-run a schedule)")
    controller = Controller(args.agent)
    cfg = load_config(args.config) if args.config else controller.env_config
    if args.model:
        model_path(args.model)  # a folder that is not a model stops here, before any data or engine
    if args.data:
        cfg = with_user_data(cfg, args.data, args.model, args.steps)
        instance = cfg.heldout[-1].name
    else:
        if args.model:
            cfg = with_model(cfg, args.model)
        instance = args.instance or (cfg.heldout[0].name if cfg.heldout else cfg.train[0].name)
        cfg.instance(instance)  # names the known instances if it is not one
        if args.steps:
            cfg = with_steps(cfg, instance, args.steps)
    if args.lora_rank:
        cfg = with_lora(cfg, instance, args.lora_rank)
    from trainers.models import check_model_limits

    check_model_limits(cfg.session)
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "tuned" / f"{instance}-{Path(args.agent).name}-seed{args.seed}"
    result = tuned_run(controller, cfg, instance, args.seed, out, not args.no_save_model)
    log = result["log"]
    print(yaml.safe_dump({"instance": instance, "eval_loss": [round(v, 4) for _, v in log["eval_curve"]],
                          "test_loss": log["test_loss"], "test_metric": log["test_metric"],
                          "lr_schedule": sorted({h["lr"] for h in log["schedule"]}),
                          "seconds": round(time.time() - t0, 1)}, sort_keys=False))
    print(f"written: {out}/schedule.json, metrics.json{'' if args.no_save_model else ', model/'}")
    print(f"replay:  python -m agents.tune --replay {out}/schedule.json")
    return result


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    main()
