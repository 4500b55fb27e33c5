"""Progress bars in a log: one plain line per update, no carriage returns or cursor moves."""
from __future__ import annotations

import io

from trainers.progress import LineWriter, progress


def test_redraws_become_lines_and_cursor_moves_are_dropped():
    out = io.StringIO()
    w = LineWriter(out)
    w.write("\rstep 1/3")
    w.write("\rstep 1/3")  # a redraw that says nothing new
    w.write("\x1b[A\rstep 2/3\x1b[A")
    w.write("\rstep 3/3\n")
    assert out.getvalue() == "step 1/3\nstep 2/3\nstep 3/3\n"


def test_a_bar_written_to_a_file_is_one_line_per_update():
    out = io.StringIO()  # not a terminal
    for _ in progress(range(5), desc="work", file=out, mininterval=0, miniters=1):
        pass
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("work:") and "5/5" in lines[-1]
    assert len(lines) == len(set(lines)) >= 2


def test_a_terminal_keeps_tqdms_live_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    for _ in progress(range(3), desc="work", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()
