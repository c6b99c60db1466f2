"""Output folders checked before anything is written: can this process create and write them, and is there room?

`run_dir` and `data.cache_dir` are refused up front (one line, exit 2) when they cannot be
created or written, instead of failing with a traceback after the data was prepared. The
check really tries: permission bits say little to root, and /proc or a file in the path
only show themselves to mkdir. It creates nothing that outlives it.

Room: a checkpoint or an export is checked against its filesystem's free space before its first byte
is written (`DiskFull`), so a full disk ends a job with one line and no half-written files; a write
that fails anyway (another process filled the disk meanwhile) is recognised by `disk_full`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """`need` bytes must be written under `path` and its filesystem has `free`: nothing was written."""

    def __init__(self, what: str, path: Path, need: int, free: int):
        self.path, self.need, self.free = path, need, free
        super().__init__(f"no space left for {what} in {path}: {human_bytes(free)} free on its filesystem, "
                         f"about {human_bytes(need)} needed, headroom included")


def nearest_existing(path: Path) -> Path:
    """`path` or the nearest ancestor that exists (where mkdir would start)."""
    path = path.expanduser().absolute()
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still put on the filesystem that holds (or will hold) `path`."""
    return shutil.disk_usage(nearest_existing(path)).free


def disk_full(error: BaseException) -> OSError | None:
    """The error (or one it wraps) that says a filesystem or quota is full, if any."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return current
        todo += [current.__cause__, current.__context__]
    return None


def human_bytes(value: float) -> str:
    """1.24 MB, 16.2 GB: three significant figures in decimal units; below a megabyte, bytes in full."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if value >= size:
            return f"{value / size:,.3g} {unit}"
    return f"{value:,.0f} B"


def unwritable(key: str, value: str) -> str | None:
    """A one-line problem (`key=value: why`) if the folder `value` cannot be created and written, else None."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    existing = nearest_existing(path)
    if not existing.is_dir():
        return f"{key}={value}: {existing} is a file, not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".orchestrator-write-test-", dir=existing)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        return f"{key}={value}: cannot create folders in {existing} ({reason.lower()}); pick a folder you can write"
    os.rmdir(probe)
    return None
