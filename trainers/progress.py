"""Progress bars that suit where they are shown: tqdm's live bar on a terminal; elsewhere (a log
file, CI) one plain line per update, at most every 30 s, instead of a stream of carriage returns."""
from __future__ import annotations

import re
import sys
from typing import Any, Iterable, Optional, TextIO

from tqdm import tqdm

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # nested bars move the cursor (ESC [ A): no place in a log


class LineWriter:
    """A file for tqdm that turns each redraw (``\\r status``) into a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> int:
        for part in ANSI_ESCAPE.sub("", text).replace("\r", "\n").split("\n"):
            part = part.strip()
            if part and part != self._last:
                self.stream.write(part + "\n")
                self._last = part
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Optional[Iterable] = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, written line by line when stderr is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        kwargs["file"] = LineWriter(stream)
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, **kwargs)
