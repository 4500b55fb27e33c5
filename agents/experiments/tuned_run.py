"""One fine-tuning run steered by a learned controller (agents.tune), and the exact replay of a
recorded run's schedule. A run writes <out>/model (the fine-tuned model), metrics.json, and
schedule.json: the per-step hyperparameters applied, with the seed and config to replay them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

from envs.episode import PolicyPlan, SchedulePlan, run_episode
from envs.finetune_env import FineTuneEnv
from trainers.atomic_files import check_writable_folder, exclusive_lock, fsync_folder, write_json_atomic
from trainers.config import ConfigError, InstanceSetConfig, parse_config, read_structured_file


def save_run(out: Path, log: dict, cfg: InstanceSetConfig, env: FineTuneEnv, agent: Optional[str],
             save_model: bool) -> None:
    """The run's files, written into a temporary sibling and renamed into place whole: two runs or
    an earlier run's files never mix in ``out``, and a write that fails (a full disk) leaves nothing."""
    schedule = {"instance": log["instance"], "seed": log["seed"], "agent": agent,
                "schedule": log["schedule"], "train_loss": log["train_loss"], "eval_curve": log["eval_curve"],
                "config": cfg.model_dump(mode="json")}
    metrics = {k: log[k] for k in ("instance", "seed", "initial_eval_loss", "eval_curve", "diverged", "test_loss",
                                   "test_metric", "metric_name")}
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        write_json_atomic(partial / "schedule.json", schedule, indent=1)
        write_json_atomic(partial / "metrics.json", metrics)
        if save_model:
            env.session.save_model(str(partial / "model"))
        replace_folder(partial, out)
    except Exception as err:  # OSError, or safetensors' own error on a full disk
        shutil.rmtree(partial, ignore_errors=True)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"--out {out}: writing the run's files failed ({first}); nothing was left half-written, "
                          f"and {out} is as it was") from None


def replace_folder(new: Path, dest: Path) -> None:
    """``new`` becomes ``dest``; what ``dest`` held before goes only once the new one is in place."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    fsync_folder(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def check_output(out: Path, cfg: InstanceSetConfig, save_model: bool) -> None:
    """Before any training: ``out`` is a folder (or will be), its parent takes files, and its disk has
    room for the model it will hold (the base model's weight files, as the saved copy is as large)."""
    from trainers.models import model_path

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    need = 0
    if save_model:
        weights = [f for f in model_path(cfg.session.model).iterdir() if f.suffix in (".safetensors", ".bin")]
        need = int(sum(f.stat().st_size for f in weights) * 1.1) + (1 << 20)
    check_writable_folder(out.parent, "--out", need)


def read_replay(path: str) -> dict[str, Any]:
    """A schedule.json written by agents.tune, checked field by field."""
    from trainers.schedules import schedule_from_json

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
    rec["parsed_schedule"] = schedule_from_json(rec["schedule"], str(p))
    cfg = parse_config(rec["config"], source=f"{p}: config")
    inst = cfg.instance(rec["instance"])
    if len(rec["schedule"]) < cfg.steps_for(inst):
        raise ConfigError(f"{p}: schedule has {len(rec['schedule'])} steps; instance {inst.name!r} needs "
                          f"{cfg.steps_for(inst)}")
    rec["parsed_config"] = cfg
    return rec


def replay(rec: dict[str, Any], out: Path, save_model: bool) -> dict[str, Any]:
    """Re-run a checked schedule.json (``read_replay``) exactly; says whether the losses reproduced."""
    cfg = rec["parsed_config"]
    check_output(out, cfg, save_model)
    with exclusive_lock(out, "--out"):
        return _replay(rec, cfg, out, save_model)


def _replay(rec: dict[str, Any], cfg: InstanceSetConfig, out: Path, save_model: bool) -> dict[str, Any]:
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    log = run_episode(env, SchedulePlan(rec["parsed_schedule"]), rec["instance"], rec["seed"])
    same = (log["train_loss"] == rec["train_loss"]
            and [list(p) for p in log["eval_curve"]] == [list(p) for p in rec["eval_curve"]])
    print(f"replayed {len(rec['schedule'])} steps of {rec['instance']} (seed {rec['seed']}): "
          f"losses {'reproduced exactly' if same else 'DIFFER from the recorded run'}")
    save_run(out, log, cfg, env, None, save_model)
    return {"log": log, "reproduced": same, "out": str(out)}


def tuned_run(controller, cfg: InstanceSetConfig, instance: str, seed: int, out: Path, save_model: bool) -> dict:
    """One run on ``instance`` steered by ``controller`` (an agent_folder.Controller); one run at a
    time writes ``out``."""
    check_output(out, cfg, save_model)
    with exclusive_lock(out, "--out"):
        env = FineTuneEnv(cfg, split="all", evaluate_test=True)
        controller.check_compatible(env.action_map)
        log = run_episode(env, PolicyPlan(controller.act), instance, seed)
        save_run(out, log, cfg, env, str(controller.folder), save_model)
    return {"log": log, "out": str(out)}
