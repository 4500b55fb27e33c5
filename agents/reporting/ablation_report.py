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

from agents.reporting.rescue_report import paired_intervals
from trainers.config import ConfigError, load_config, read_structured_file

STARTS = {"policy": "from the recipe's own start", "policy_guess": "from a user's guess (0.01x-100x)"}


def read_evaluation(folder: Path) -> tuple[dict[str, list[dict]], dict, set[str]]:
    """An agent folder's held-out runs, summary, and extrapolation instances."""
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
    cfg = load_config(Path(folder) / "env_config.yaml")
    return runs, data.get("summary") or {}, {i.name for i in cfg.heldout if "extrapolation" in i.tags}


def _pairs(runs: list[dict]) -> set[tuple[str, int]]:
    return {(r["instance"], r["seed"]) for r in runs}


def ablation_summary(full: Path, variants: dict[str, Path]) -> dict:
    """Per part switched off: its paired difference to the full controller, per start."""
    full_runs, full_summary, extrapolation = read_evaluation(full)
    in_range = {r["instance"] for r in full_runs["policy"]} - extrapolation
    out: dict = {"full": str(full), "definition": "test loss of the controller without the part minus the full "
                 "controller's, paired on (instance, seed); > 0: the part lowered the loss",
                 "extrapolation_instances": sorted(extrapolation), "parts": {}}
    for part, folder in variants.items():
        runs, summary, _ = read_evaluation(folder)
        row: dict = {"agent": str(folder)}
        for method, label in STARTS.items():
            if method not in full_runs or method not in runs:
                continue
            if _pairs(runs[method]) != _pairs(full_runs[method]):
                raise ConfigError(f"{Path(folder) / 'heldout.json'}: runs.{method} covers other (instance, seed) "
                                  f"pairs than {Path(full) / 'heldout.json'}; evaluate both with the same --seeds")
            d = paired_intervals({"without": runs[method], "full": full_runs[method]}, "without", "full", in_range)
            if d is not None:
                d["verdict"] = "bought" if d.get("worse") else ("cost" if d.get("better") else "nothing shown")
                d["start"] = label
            row[method] = d
        row["own_minus_base_recipe"] = ((summary.get("rescue") or {}).get("policy_minus_base_recipe") or {}).get("in_range")
        row["own_rescue_median_gap"] = (((summary.get("rescue") or {}).get("methods") or {}).get("policy_guess")
                                        or {}).get("median_gap")
        out["parts"][part] = row
    out["full_minus_base_recipe"] = ((full_summary.get("rescue") or {}).get("policy_minus_base_recipe") or {}).get("in_range")
    out["full_rescue_median_gap"] = (((full_summary.get("rescue") or {}).get("methods") or {}).get("policy_guess")
                                     or {}).get("median_gap")
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
             "| part switched off | agent | " + " | ".join(STARTS.values()) + " |",
             "|---|---|" + "---|" * len(STARTS)]
    for part, row in summary["parts"].items():
        lines.append(f"| {part} | `{row['agent']}` | " + " | ".join(_cell(row.get(m)) for m in STARTS) + " |")
    lines += ["", "Each agent is one training run: the intervals cover held-out instances and evaluation seeds, "
              "not the spread between training runs of the same setup.", "",
              "Each agent's own policy − its base recipe (in range, mean), and its median rescue gap "
              "(test loss from a user's guess over the recipe's own, − 1):", ""]

    def gap(g: Optional[float]) -> str:
        return f"{100 * g:+.1f}%" if isinstance(g, (int, float)) else "–"

    full = summary.get("full_minus_base_recipe") or {}
    lines.append(f"- full: {full.get('mean', float('nan')):+.3f}; rescue gap {gap(summary.get('full_rescue_median_gap'))}")
    for part, row in summary["parts"].items():
        own = row.get("own_minus_base_recipe") or {}
        lines.append(f"- without {part}: {own.get('mean', float('nan')):+.3f}; "
                     f"rescue gap {gap(row.get('own_rescue_median_gap'))}")
    return "\n".join(lines) + "\n"
