"""Where a measurement came from: the machine, its load and the commit, stored beside every number."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import time

from trainers.config import REPO_ROOT


def git_commit() -> str | None:
    """The checkout's short commit hash, with "+changes" when tracked code outside results/ differs
    from it (the number then came from code no commit holds); None outside a git checkout."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(REPO_ROOT), *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=30).stdout.strip()
        commit = run("rev-parse", "--short", "HEAD")
        if not commit:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
        # the machine is shared: its load when the figures were taken says how far to trust them
        "loadavg_1_5_15min": [round(x, 2) for x in os.getloadavg()],
    }


@functools.lru_cache(maxsize=1)
def stack_info() -> dict:
    """What must match for a run measured elsewhere to stand in for one made here: the same floats
    need the same Python, torch, thread count and accelerator."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
