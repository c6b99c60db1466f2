"""Building a data-cache entry at most once, across processes and nodes that share the cache: a file lock
around the build, the input files checked before anything is written (data/file_checks.py), and a failed build
leaving neither its partial `<entry>.tmp` folder nor its lock file behind. Every preparation (token shards, chat
rows, labelled rows) builds through `build_once`; each writes into `<entry>.tmp` and renames it into place last.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import ConfigError


def build_once(root: Path, problems: Callable[[], list[str]], build: Callable[[], None]) -> None:
    """Build the entry at `root` unless it exists; `problems` (its inputs' one-line faults) are checked first,
    outside the lock, and refused as a ConfigError."""
    if (root / "meta.json").exists():
        return
    found = problems()
    if found:
        raise ConfigError(found)
    from filelock import FileLock

    lock = Path(f"{root}.lock")
    try:
        with FileLock(str(lock)):
            if not (root / "meta.json").exists():
                build()
    finally:
        if not (root / "meta.json").exists():  # failed (or stopped): nothing half-built stays in the cache
            shutil.rmtree(root.with_name(root.name + ".tmp"), ignore_errors=True)
            lock.unlink(missing_ok=True)
