"""How every command of the project meets bad input: one line that starts with ``error:`` and
names the file, field or value, then exit status 2, with no traceback and nothing touched on disk.

A command builds its parser with ``CommandParser`` (argparse's own errors become that one line),
checks its arguments with the types below, and runs its body through ``run_command``, which turns
a ``ConfigError`` (bad config, data file, agent folder, argument value) into the same line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

from trainers.config import ConfigError


class CommandParser(argparse.ArgumentParser):
    """argparse, with its usage errors printed as one ``error:`` line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def fail(message: str) -> NoReturn:
    """Print the one error line and exit 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    raise SystemExit(2)


def run_command(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], Any],
                argv: Optional[Sequence[str]] = None) -> Any:
    """Parse, then run; a ConfigError anywhere in the body becomes the one error line, and Ctrl-C
    one line and exit 130 (a command that keeps work across a stop says what it kept itself)."""
    args = parser.parse_args(argv)
    try:
        return body(args)
    except ConfigError as err:
        fail(str(err))
    except KeyboardInterrupt:
        print(f"error: {parser.prog} interrupted (experiments keep every unit of work they finished: rerun "
              "the same command to carry on)", file=sys.stderr)
        raise SystemExit(130) from None


# ------------------------------------------------------------------ argument types
def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}")
    return value


def plain_name(text: str) -> str:
    """A folder name that stays inside its parent: no separators, no '..', nothing hidden."""
    bad = ("/", "\\", "\0")
    if not text or text in (".", "..") or any(c in text for c in bad) or text.startswith("."):
        raise argparse.ArgumentTypeError(f"must be a plain folder name (no '/', no '..', not hidden), got {text!r}")
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
