"""The ablation table: what each part of a controller bought, from agents already evaluated.

    python -m agents.ablation --full results/agents/<full> \\
        --without anchor=results/agents/<same, without the anchored observation> [--without PART=FOLDER ...]

Every agent must have been evaluated (python -m agents.evaluate --agent FOLDER) with the same seeds.
Nothing is trained or run here: the table is read from their held-out runs
(agents/reporting/ablation_report.py says how). Writes <out>/<full agent's name>.json and .md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from trainers.cli import CommandParser, plain_name, run_command
from trainers.config import REPO_ROOT, ConfigError


def part_and_folder(text: str) -> tuple[str, Path]:
    part, sep, folder = text.partition("=")
    if not sep or not folder:
        raise argparse.ArgumentTypeError(f"expected PART=AGENT_FOLDER, got {text!r}")
    return plain_name(part), Path(folder)


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.ablation", description=__doc__)
    p.add_argument("--full", required=True, help="the agent folder with every part")
    p.add_argument("--without", action="append", type=part_and_folder, required=True, metavar="PART=FOLDER",
                   help="an agent trained the same way with PART switched off (repeat for each part)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "ablations"), help="folder for the table "
                   "(default: results/ablations)")
    return p


def ablate(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict:
    from agents.reporting.ablation_report import ablation_markdown, ablation_summary
    from trainers.atomic_files import check_writable_folder, write_json_atomic, write_text_atomic
    from trainers.provenance import machine_info, utc_now

    parts = dict(args.without)
    if len(parts) != len(args.without):
        raise ConfigError("--without: a part is named twice")
    summary = ablation_summary(Path(args.full), parts)
    command = "python -m agents.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    summary.update(command=command, measured_at=utc_now(), machine=machine_info())
    out = Path(args.out)
    check_writable_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.full).resolve().name
    write_json_atomic(out / f"{name}.json", summary)
    write_text_atomic(out / f"{name}.md", ablation_markdown(summary, command))
    print((out / f"{name}.md").read_text())
    print(f"written: {out / (name + '.json')}, {out / (name + '.md')}")
    return summary


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), lambda args: ablate(args, argv), argv)


if __name__ == "__main__":
    main()
