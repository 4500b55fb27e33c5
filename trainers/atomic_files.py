"""Files written whole or not at all: a temporary file in the same folder, flushed to disk, then a
rename, then the folder flushed too.

A crash or Ctrl-C mid-write leaves the previous version (or nothing), never half a file that a
resume, a reader or a user would trust; a power cut after the rename cannot leave an empty file.
Files get the mode the user's umask gives (mkstemp alone would make every one 0600).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from trainers.config import ConfigError


def _umask_mode() -> int:
    """The mode a new file gets from the user's umask, read without changing it where Linux says it
    (setting it to read it would, for that instant, hand any other thread's new file mode 0666)."""
    try:
        with open("/proc/self/status") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _umask_mode())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")


def check_writable_folder(folder: str | Path, what: str, need_bytes: int = 0) -> None:
    """Before any work: the folder a command will write into (or its nearest existing parent, where
    it will be made) is a folder, takes a file (tried, since permission bits say nothing to root or
    on a read-only mount), and has ``need_bytes`` free. A ConfigError naming ``what`` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder}: exists and is not a folder")
    probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if probe is None or not probe.is_dir():
        raise ConfigError(f"{what} {folder}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ConfigError(f"{what} {folder}: {probe} is not writable ({err.strerror})") from None
    if need_bytes:
        free = os.statvfs(probe).f_bavail * os.statvfs(probe).f_frsize
        if free < need_bytes:
            raise ConfigError(f"{what} {folder}: {free / 2**20:.1f} MiB free on its disk, {need_bytes / 2**20:.1f} MiB "
                              "needed; free some space or choose another folder")


def lock_file_for(target: str | Path) -> Path:
    """The lock beside a folder or file a run writes: ``<parent>/.<name>.lock``."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def lock_holder(target: str | Path) -> str | None:
    """Who holds ``target``'s lock (the holder's own note), or None when no living process does."""
    import fcntl

    path = lock_file_for(target)
    if not path.is_file():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            return fh.read().strip() or "a process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


@contextmanager
def exclusive_lock(target: str | Path, what: str) -> Iterator[None]:
    """One run at a time writes ``target``: an flock on its lock file, held until the body ends.
    The kernel releases it when the process dies, however it dies, so a killed run never leaves a
    live lock behind (only the file, which the next run takes over). The holder removes the file
    when it ends; a run that locked a file just removed sees that (the path is no longer its file)
    and tries again on the new one."""
    import fcntl

    path = lock_file_for(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "a process"
            fh.close()
            raise ConfigError(f"{what} {target}: another run ({holder}) is writing it; wait for it to end, "
                              "or choose another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    else:
        raise ConfigError(f"{what} {target}: its lock file {path} keeps changing; is another run starting?")
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        fh.close()
