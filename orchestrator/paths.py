"""Output folders checked before anything is written: can this process create and write them?

`run_dir` and `data.cache_dir` are refused up front (one line, exit 2) when they cannot be
created or written, instead of failing with a traceback after the data was prepared. The
check really tries: permission bits say little to root, and /proc or a file in the path
only show themselves to mkdir. It creates nothing that outlives it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def unwritable(key: str, value: str) -> str | None:
    """A one-line problem (`key=value: why`) if the folder `value` cannot be created and written, else None."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    existing = path
    while not existing.exists():  # the nearest ancestor that exists is where mkdir would start
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}={value}: {existing} is a file, not a folder"
    try:
        probe = tempfile.mkdtemp(prefix=".orchestrator-write-test-", dir=existing)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        return f"{key}={value}: cannot create folders in {existing} ({reason.lower()}); pick a folder you can write"
    os.rmdir(probe)
    return None
