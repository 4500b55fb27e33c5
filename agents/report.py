"""Write results/REPORT.md and the README's generated blocks (headline, main job) from the committed result files.

    python -m agents.report            # rewrite both
    python -m agents.report --check    # exit 1 if either is out of date (the test suite runs this)

Nothing is measured here: every number is read from a summary that a named command wrote
(agents/reporting/project_report.py), so the README and the report cannot drift from the results.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from trainers.cli import CommandParser, run_command
from trainers.config import REPO_ROOT


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.report", description=__doc__)
    p.add_argument("--results", default=str(REPO_ROOT / "results"), help="the results folder (default: results/)")
    p.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="the README whose generated blocks are written")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if either file is out of date")
    return p


def write(args: argparse.Namespace) -> bool:
    from agents.reporting.project_report import report, with_blocks
    from trainers.atomic_files import write_text_atomic
    from trainers.config import ConfigError

    results, readme = Path(args.results), Path(args.readme)
    if not readme.is_file():
        raise ConfigError(f"--readme {readme}: no such file")
    try:
        new_readme = with_blocks(readme.read_text(), results)
    except ValueError as err:
        raise ConfigError(f"{readme}: {err}") from None
    new_report = report(results)
    target = results / "REPORT.md"
    stale = [p for p, text in ((target, new_report), (readme, new_readme))
             if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"out of date: {p} (run python -m agents.report)", file=sys.stderr)
        if stale:
            raise SystemExit(1)
        return True
    write_text_atomic(target, new_report)
    write_text_atomic(readme, new_readme)
    print(f"written: {target}, {readme} (generated blocks)")
    return True


def main(argv: Optional[list[str]] = None) -> bool:
    return run_command(build_parser(), write, argv)


if __name__ == "__main__":
    main()
