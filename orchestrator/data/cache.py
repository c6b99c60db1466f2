"""Building a data-cache entry at most once, across processes and nodes that share the cache: a file lock
around the build, the input files checked before anything is written (data/file_checks.py), and a failed build
leaving neither its partial `<entry>.tmp` folder nor its lock file behind. Every preparation (token shards, chat
rows, labelled rows) builds through `build_once` and writes into `<entry>.tmp`, which `seal` renames into place
last, with every file's size in meta.json: an entry whose files no longer match (a truncated `tokens.bin`, a
deleted index) is built again, never read as tokens.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import ConfigError

META = "meta.json"


def build_once(root: Path, problems: Callable[[], list[str]], build: Callable[[], None]) -> None:
    """Build the entry at `root` unless it is there intact; `problems` (its inputs' one-line faults) are checked
    first, outside the lock, and refused as a ConfigError."""
    if damage(root) is None:
        return
    found = problems()
    if found:
        raise ConfigError(found)
    from filelock import FileLock

    lock = Path(f"{root}.lock")
    try:
        with FileLock(str(lock)):
            why = damage(root)
            if why is not None:
                if root.exists():
                    print(f"data cache: {root} {why}; building it again", flush=True)
                    shutil.rmtree(root)
                build()
    finally:
        if not (root / META).exists():  # failed (or stopped): nothing half-built stays in the cache
            shutil.rmtree(root.with_name(root.name + ".tmp"), ignore_errors=True)
            lock.unlink(missing_ok=True)


def seal(tmp: Path, meta: dict, root: Path) -> None:
    """Write meta.json, with the size of every file beside it, and move the entry into place whole."""
    sizes = {str(path.relative_to(tmp)): path.stat().st_size for path in sorted(tmp.rglob("*")) if path.is_file()}
    (tmp / META).write_text(json.dumps({**meta, "files": sizes}, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)  # the entry appears whole or not at all


def damage(root: Path) -> str | None:
    """Why the entry at `root` cannot be used (absent, or a file missing or of another size than sealed), or
    None when it is intact."""
    try:
        sizes = json.loads((root / META).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return "is absent or unsealed"
    for name, size in sizes.items():
        path = root / name
        if not path.is_file():
            return f"lost {name}"
        if path.stat().st_size != size:
            return f"holds {name} of {path.stat().st_size:,} bytes, sealed at {size:,}"
    return None
