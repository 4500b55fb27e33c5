"""Use a learned controller on one new fine-tuning run, for the cost of that run.

    python -m agents.tune --agent results/agents/ppo-tiny-seed0 --instance bbc-tech-lm
    python -m agents.tune --agent results/agents/ppo-tiny-seed0 --data my.jsonl --model path/to/hf_model
    python -m agents.tune --replay results/tuned/<run>/schedule.json      # no agent: same schedule, same losses

Writes <out>/model (the fine-tuned model), metrics.json, and schedule.json: the per-step
hyperparameters that were applied, with the seed and config needed to replay them exactly.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from trainers.atomic_files import write_json_atomic
from trainers.cli import CommandParser, positive_int, run_command
from trainers.config import (HPARAM_NAMES, REPO_ROOT, ConfigError, InstanceSetConfig, deep_merge, load_config,
                             parse_config, read_structured_file)


def model_setting(model: str) -> str:
    """A model folder as an absolute path (Ray Tune's trials and Ray actors do not run in this
    directory); a preset name as it is."""
    from trainers.models import PRESETS

    return model if model in PRESETS or not Path(model).is_dir() else str(Path(model).resolve())


def user_config(base: InstanceSetConfig, data: str, model: Optional[str], steps: Optional[int]) -> InstanceSetConfig:
    """The agent's environment, retargeted at a user's JSONL file and (optionally) model folder.
    The file is read here, so a bad one stops before any engine is built."""
    from trainers.data import read_jsonl

    read_jsonl(data)
    d = base.model_dump(mode="json")
    rec = d["default_recipe"]
    inst = {"name": Path(data).stem, "dataset": {"kind": "jsonl", "path": str(Path(data).resolve())},
            "init_lr": [rec["lr"], rec["lr"]], "init_weight_decay": [max(rec["weight_decay"], 1e-4)] * 2,
            "init_grad_clip": [rec["grad_clip"]] * 2}
    if steps:
        inst["total_steps"] = steps
    d = deep_merge(d, {"heldout": [inst]})
    if model:
        d["session"]["model"] = model_setting(model)
    return parse_config(d, source="agents.tune arguments")


def with_model(cfg: InstanceSetConfig, model: str) -> InstanceSetConfig:
    """The same instance set on another model (a Hugging Face folder or a preset)."""
    return parse_config(deep_merge(cfg.model_dump(mode="json"), {"session": {"model": model_setting(model)}}))


def save_run(out: Path, log: dict, cfg: InstanceSetConfig, env, agent: Optional[str], save_model: bool) -> None:
    schedule = {"instance": log["instance"], "seed": log["seed"], "agent": agent,
                "schedule": log["schedule"], "train_loss": log["train_loss"], "eval_curve": log["eval_curve"],
                "config": cfg.model_dump(mode="json")}
    write_json_atomic(out / "schedule.json", schedule, indent=1)
    metrics = {k: log[k] for k in ("instance", "seed", "initial_eval_loss", "eval_curve", "diverged", "test_loss",
                                   "test_metric", "metric_name")}
    write_json_atomic(out / "metrics.json", metrics)
    if save_model:
        env.session.save_model(str(out / "model"))


def read_replay(path: str) -> dict[str, Any]:
    """A schedule.json written by this command, checked field by field."""
    p = Path(path)
    if p.suffix != ".json":
        raise ConfigError(f"{p}: a replay is a schedule.json written by agents.tune")
    rec = read_structured_file(p, "schedule file")
    if not isinstance(rec, dict):
        raise ConfigError(f"{p}: expected a JSON object written by agents.tune")
    for key, kind in (("instance", str), ("schedule", list), ("config", dict), ("train_loss", list),
                      ("eval_curve", list)):
        if not isinstance(rec.get(key), kind):
            raise ConfigError(f"{p}: field {key!r} is missing or not a {kind.__name__}; is this a schedule.json "
                              "written by agents.tune?")
    if rec.get("seed") is not None and not isinstance(rec["seed"], int):
        raise ConfigError(f"{p}: field 'seed' must be an integer or null, got {rec['seed']!r}")
    for i, step in enumerate(rec["schedule"]):
        ok = isinstance(step, dict) and set(step) == set(HPARAM_NAMES) and all(
            isinstance(v, (int, float)) and v >= 0 for v in step.values())
        if not ok:
            raise ConfigError(f"{p}: schedule[{i}] must be {{lr, weight_decay, grad_clip}} with numbers >= 0, "
                              f"got {step!r}")
    cfg = parse_config(rec["config"], source=f"{p}: config")
    inst = cfg.instance(rec["instance"])
    if len(rec["schedule"]) < cfg.steps_for(inst):
        raise ConfigError(f"{p}: schedule has {len(rec['schedule'])} steps; instance {inst.name!r} needs "
                          f"{cfg.steps_for(inst)}")
    rec["parsed_config"] = cfg
    return rec


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.tune", description=__doc__)
    p.add_argument("--agent", help="agent folder from agents.train_agent")
    p.add_argument("--instance", help="a held-out (or any) instance of the agent's instance set")
    p.add_argument("--data", help="your JSONL file of {\"prompt\",\"completion\"} or {\"text\"} records")
    p.add_argument("--model", help="a Hugging Face model folder, or a preset (tiny-gpt, smollm2-135m)")
    p.add_argument("--config", help="a whole instance-set YAML to run in instead of the agent's")
    p.add_argument("--steps", type=positive_int, help="training steps of the run (default: the instance's budget)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (default: 0)")
    p.add_argument("--replay", help="schedule.json from an earlier run: re-run it exactly, no agent")
    p.add_argument("--out", help="output folder (default: results/tuned/<instance>-<agent or replay>-seed<seed>)")
    p.add_argument("--no-save-model", action="store_true", help="skip writing the fine-tuned model")
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), run, argv)


def run(args: argparse.Namespace) -> dict:
    from agents.learners.agent_folder import Controller
    from envs.episode import PolicyPlan, SchedulePlan, run_episode
    from envs.finetune_env import FineTuneEnv
    from trainers.models import model_path

    t0 = time.time()
    if args.replay:
        rec = read_replay(args.replay)
        cfg = rec["parsed_config"]
        env = FineTuneEnv(cfg, split="all", evaluate_test=True)
        log = run_episode(env, SchedulePlan(rec["schedule"]), rec["instance"], rec["seed"])
        same = (log["train_loss"] == rec["train_loss"]
                and [list(p) for p in log["eval_curve"]] == [list(p) for p in rec["eval_curve"]])
        print(f"replayed {len(rec['schedule'])} steps of {rec['instance']} (seed {rec['seed']}): "
              f"losses {'reproduced exactly' if same else 'DIFFER from the recorded run'}")
        out = Path(args.out) if args.out else Path(args.replay).parent / "replay"
        save_run(out, log, cfg, env, None, not args.no_save_model)
        return {"log": log, "reproduced": same, "out": str(out)}
    if not args.agent:
        raise ConfigError("give --agent (to tune) or --replay (to re-run a schedule)")
    controller = Controller(args.agent)
    cfg = load_config(args.config) if args.config else controller.env_config
    if args.model:
        model_path(args.model)  # a folder that is not a model stops here, before any data or engine
    if args.data:
        cfg = user_config(cfg, args.data, args.model, args.steps)
        instance = cfg.heldout[-1].name
    else:
        if args.model:
            cfg = with_model(cfg, args.model)
        instance = args.instance or (cfg.heldout[0].name if cfg.heldout else cfg.train[0].name)
        cfg.instance(instance)  # names the known instances if it is not one
        if args.steps:
            d = cfg.model_dump(mode="json")
            for group in ("train", "heldout"):
                for i in d[group]:
                    if i["name"] == instance:
                        i["total_steps"] = args.steps
            cfg = parse_config(d)
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    controller.check_compatible(env.actions)
    log = run_episode(env, PolicyPlan(controller.act), instance, args.seed)
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "tuned" / f"{instance}-{Path(args.agent).name}-seed{args.seed}"
    save_run(out, log, cfg, env, str(args.agent), not args.no_save_model)
    print(yaml.safe_dump({"instance": instance, "eval_loss": [round(v, 4) for _, v in log["eval_curve"]],
                          "test_loss": log["test_loss"], "test_metric": log["test_metric"],
                          "lr_schedule": sorted({h["lr"] for h in log["schedule"]}),
                          "seconds": round(time.time() - t0, 1)}, sort_keys=False))
    print(f"written: {out}/schedule.json, metrics.json{'' if args.no_save_model else ', model/'}")
    print(f"replay:  python -m agents.tune --replay {out}/schedule.json")
    return {"log": log, "out": str(out)}


if __name__ == "__main__":
    main()
