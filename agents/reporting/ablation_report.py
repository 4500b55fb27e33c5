"""What each part of a controller bought (issue 24, item 3): a controller with every part against
controllers trained the same way with one part switched off, on the held-out instances' test
split, paired on (instance, seed).

Each row is (controller without the part) − (the full controller), test loss: above 0 means the
part lowered the loss. It is read from the two agents' held-out evaluations (agents.evaluate), so
the runs are the ones their own reports show; the intervals are paired_intervals' (a two-level
bootstrap over instances then seeds, and a t interval over instance means), and a part "bought"
something only when both lie above 0 ("cost" when both lie below). The extrapolation instances
are left out of the in-range rows, as everywhere else.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from agents.reporting.rescue_report import _median_with_interval, paired_intervals
from trainers.config import ConfigError, InstanceSetConfig, load_config, read_structured_file

STARTS = {"policy": "from the recipe's own start", "policy_guess": "from a user's guess (0.01x-100x)"}


def read_evaluation(folder: Path) -> tuple[dict[str, list[dict]], dict, InstanceSetConfig]:
    """An agent folder's held-out runs, summary, and instance set."""
    path = Path(folder) / "heldout.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no held-out evaluation (run python -m agents.evaluate --agent {folder})")
    data = read_structured_file(path)
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, dict) or not isinstance(runs.get("policy"), list):
        raise ConfigError(f"{path}: field 'runs.policy' is missing; not an agents.evaluate result")
    for method, rows in runs.items():
        for r in rows if isinstance(rows, list) else [None]:
            if not (isinstance(r, dict) and isinstance(r.get("instance"), str) and isinstance(r.get("seed"), int)
                    and isinstance(r.get("test_loss"), (int, float))):
                raise ConfigError(f"{path}: runs.{method}: every run needs instance, seed and test_loss")
    return runs, data.get("summary") or {}, load_config(Path(folder) / "env_config.yaml")


def check_comparable(full: Path, full_cfg: InstanceSetConfig, folder: Path, cfg: InstanceSetConfig) -> None:
    """The two agents met the same runs: the same instance set but for its name, its action space
    and its control (what an ablation switches), the same base recipe, and the same held-out
    instances with the same tags."""
    skip = {"name", "action", "control"}
    if cfg.model_dump(exclude=skip) != full_cfg.model_dump(exclude=skip):
        raise ConfigError(f"{Path(folder) / 'env_config.yaml'}: another instance set than {Path(full) / 'env_config.yaml'} "
                          "(beyond name, action and control): its runs are not comparable")
    if cfg.base_recipe != full_cfg.base_recipe:
        raise ConfigError(f"{Path(folder) / 'env_config.yaml'}: another base recipe than {full}'s")


def training_record(folder: Path) -> dict:
    """How an agent learned, from its agent.json: learner, decisions, and what it imitated."""
    path = Path(folder) / "agent.json"
    agent = read_structured_file(path) if path.is_file() else None
    if not isinstance(agent, dict) or not agent:
        return {"recorded": False}
    imitation = agent.get("imitation") if isinstance(agent.get("imitation"), dict) else {}
    command = str(agent.get("command") or "")
    return {"recorded": True, "algo": agent.get("algo"), "decisions": agent.get("total_timesteps"),
            "imitation": imitation.get("source"), "imitated_decisions": imitation.get("decisions"),
            "seed": agent.get("seed"), "n_envs": agent.get("n_envs"), "resumed": "--resume" in command.split(),
            "learner_hparams": agent.get("learner_hparams") if isinstance(agent.get("learner_hparams"), dict) else {}}


def differences(full_cfg: InstanceSetConfig, full_training: dict, cfg: InstanceSetConfig, training: dict) -> list[str]:
    """Everything a variant changed against the full controller, so that a row that switches off
    more than its named part says so rather than passing for a one-part ablation."""
    mine, theirs = cfg.control.model_dump(exclude={"recipe"}), full_cfg.control.model_dump(exclude={"recipe"})
    out = [f"control.{k}" for k in mine if mine[k] != theirs[k]]
    if cfg.action != full_cfg.action:
        out.append("action")
    if not (training.get("recorded") and full_training.get("recorded")):
        return out + ["training not recorded (no agent.json)"]
    for key, label in (("algo", "learner"), ("imitation", "imitation"), ("imitated_decisions", "imitated decisions"),
                       ("decisions", "learned decisions"), ("seed", "seed"), ("n_envs", "environments"),
                       ("resumed", "resumed")):
        if training.get(key) != full_training.get(key):
            out.append(f"{label} {training.get(key)} (full: {full_training.get(key)})")
    mine, theirs = training["learner_hparams"], full_training["learner_hparams"]
    if not training.get("decisions") or not full_training.get("decisions"):
        return out  # a learner that never took a step: its settings changed nothing
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            out.append(f"{key} {mine.get(key)} (full: {theirs.get(key)})")
    return out


def _check_same_starts(folder: Path, full: Path, method: str, runs: list[dict], full_runs: list[dict]) -> None:
    theirs = {(r["instance"], r["seed"]): r.get("start_scales") for r in full_runs}
    for r in runs:
        if r.get("start_scales") != theirs[(r["instance"], r["seed"])]:
            raise ConfigError(f"{Path(folder) / 'heldout.json'}: runs.{method} of {r['instance']!r} seed {r['seed']} "
                              f"started elsewhere than {full}'s; its runs are not paired with them")


def rescue_gap(runs: dict[str, list[dict]], keep: set[str]) -> Optional[dict]:
    """The policy's median gap from a user's guess (test loss over the recipe's own on the same
    instance and seed, − 1) over the instances in ``keep``, with rescue_report's interval."""
    if "policy_guess" not in runs or "held_start" not in runs:
        return None
    base = {(r["instance"], r["seed"]): r["test_loss"] for r in runs["held_start"]}
    per_inst: dict[str, list[float]] = {}
    for r in runs["policy_guess"]:
        if r["instance"] in keep and (r["instance"], r["seed"]) in base:
            per_inst.setdefault(r["instance"], []).append(r["test_loss"] / base[(r["instance"], r["seed"])] - 1.0)
    if not per_inst:
        return None
    med, lo, hi = _median_with_interval(per_inst)
    return {"median_gap": med, "median_gap_ci95": [lo, hi], "n_instances": len(per_inst)}


def _pairs(runs: list[dict]) -> set[tuple[str, int]]:
    return {(r["instance"], r["seed"]) for r in runs}


def ablation_summary(full: Path, variants: dict[str, Path]) -> dict:
    """Per part switched off: its paired difference to the full controller, per start."""
    full_runs, full_summary, full_cfg = read_evaluation(full)
    extrapolation = {i.name for i in full_cfg.heldout if "extrapolation" in i.tags}
    in_range = {r["instance"] for r in full_runs["policy"]} - extrapolation
    out: dict = {"full": str(full), "definition": "test loss of the controller without the part minus the full "
                 "controller's, paired on (instance, seed); > 0: the part lowered the loss",
                 "extrapolation_instances": sorted(extrapolation), "parts": {}}
    full_training = training_record(full)
    out["full_training"] = full_training
    for part, folder in variants.items():
        runs, summary, cfg = read_evaluation(folder)
        check_comparable(full, full_cfg, folder, cfg)
        training = training_record(folder)
        row: dict = {"agent": str(folder), "training": training,
                     "differs_in": differences(full_cfg, full_training, cfg, training)}
        for method, label in STARTS.items():
            if method not in full_runs or method not in runs:
                continue
            if _pairs(runs[method]) != _pairs(full_runs[method]):
                raise ConfigError(f"{Path(folder) / 'heldout.json'}: runs.{method} covers other (instance, seed) "
                                  f"pairs than {Path(full) / 'heldout.json'}; evaluate both with the same --seeds")
            _check_same_starts(folder, full, method, runs[method], full_runs[method])
            d = paired_intervals({"without": runs[method], "full": full_runs[method]}, "without", "full", in_range)
            if d is not None:
                d["verdict"] = "bought" if d.get("worse") else ("cost" if d.get("better") else "nothing shown")
                d["start"] = label
            row[method] = d
        row["own_minus_base_recipe"] = ((summary.get("rescue") or {}).get("policy_minus_base_recipe") or {}).get("in_range")
        row["own_rescue_gap"] = rescue_gap(runs, in_range)
        out["parts"][part] = row
    out["full_minus_base_recipe"] = ((full_summary.get("rescue") or {}).get("policy_minus_base_recipe") or {}).get("in_range")
    out["full_rescue_gap"] = rescue_gap(full_runs, in_range)
    return out


def _cell(d: Optional[dict]) -> str:
    if not d:
        return "–"
    if "ci95_low" not in d:
        return f"{d['mean']:+.3f} (1 instance)"
    t_lo, t_hi = d["t_ci95_over_instances"]
    return (f"{d['mean']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}] t [{t_lo:+.3f}, {t_hi:+.3f}] "
            f"{d['verdict']}")


def ablation_markdown(summary: dict, command: str) -> str:
    lines = [f"# Ablations of `{summary['full']}`", "", f"`{command}`", "",
             "Each cell: (controller without the part) − (full controller), test loss on the held-out instances "
             "in the training range, paired on (instance, seed); mean over instances, 95% two-level bootstrap "
             "(instances, then seeds within them) and t interval over instance means. > 0: the part lowered the "
             "loss; 'bought' / 'cost' need both intervals on one side of 0.", "",
             "| part switched off | agent | differs from the full controller in | " + " | ".join(STARTS.values()) + " |",
             "|---|---|---|" + "---|" * len(STARTS)]
    for part, row in summary["parts"].items():
        lines.append(f"| {part} | `{row['agent']}` | {'; '.join(row.get('differs_in') or []) or 'nothing'} | "
                     + " | ".join(_cell(row.get(m)) for m in STARTS) + " |")
    lines += ["", "Each agent is one training run: the intervals cover held-out instances and evaluation seeds, "
              "not the spread between training runs of the same setup. A row whose agent differs in more than its "
              "named part is not a one-part ablation: read it as the difference of everything listed.", "",
              "Each agent on its own, in range: its policy − its base recipe from the recipe's start (mean), and "
              "its median rescue gap from a user's guess (test loss over the recipe's own on the same instance and "
              "seed, − 1; 95% interval from resampling instances):", ""]

    def gap(g: Optional[dict]) -> str:
        if not g:
            return "–"
        lo, hi = g["median_gap_ci95"]
        return f"{100 * g['median_gap']:+.1f}% [{100 * lo:+.1f}%, {100 * hi:+.1f}%]"

    full = summary.get("full_minus_base_recipe") or {}
    lines.append(f"- full: {full.get('mean', float('nan')):+.3f}; rescue gap {gap(summary.get('full_rescue_gap'))}")
    for part, row in summary["parts"].items():
        own = row.get("own_minus_base_recipe") or {}
        lines.append(f"- without {part}: {own.get('mean', float('nan')):+.3f}; rescue gap {gap(row.get('own_rescue_gap'))}")
    return "\n".join(lines) + "\n"
