"""Checkpoint layout, integrity and retention. Pure file handling: no torch, no DeepSpeed.

    <run_dir>/checkpoints/
      step_00000010/          one folder per checkpoint
        ...                   DeepSpeed's shards, one set per rank (train/engine.py writes them)
        rank_00000.pt, ...    our per-rank state: RNG states and data position
        manifest.json         every file above with its size; step, tokens, world size, W&B run id
        COMPLETE              written last, once every rank's files are on disk
      latest                  names the newest COMPLETE checkpoint; replaced atomically

A checkpoint counts only if its marker exists and every file in its manifest is present with
the recorded size; anything else (a writer killed mid-save, a truncated file, a missing
marker) is skipped with a reason, and the previous complete one is used. Retention never
deletes the newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
LATEST = "latest"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    world_size: int
    meta: dict

    @property
    def tag(self) -> str:
        return self.path.name


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_state_file(path: Path, rank: int) -> Path:
    return path / f"rank_{rank:05d}.pt"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def seal(path: Path, meta: dict) -> None:
    """Record every file of a fully written checkpoint, then mark it complete and make it `latest`.

    Call once, on one rank, after a barrier that follows every rank's save.
    """
    files = {
        str(f.relative_to(path)): f.stat().st_size
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name not in (MARKER, MANIFEST) and not f.name.endswith(".tmp")
    }
    _write_atomically(path / MANIFEST, json.dumps({**meta, "files": files}, indent=2))
    _write_atomically(path / MARKER, str(meta["step"]))
    _write_atomically(path.parent / LATEST, path.name)


def problem(path: Path) -> str | None:
    """Why this checkpoint cannot be used, or None when it is complete and intact."""
    if not (path / MARKER).is_file():
        return "no completion marker (the writer stopped before every rank had saved)"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return "missing or unreadable manifest.json"
    for name, size in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is truncated or altered ({f.stat().st_size} of {size} bytes)"
    return None


def load(path: Path) -> Checkpoint:
    meta = json.loads((path / MANIFEST).read_text())
    return Checkpoint(path=path, step=int(meta["step"]), world_size=int(meta["world_size"]), meta=meta)


def candidates(root: Path) -> list[Path]:
    """Checkpoint folders under root, newest step first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")),
                  key=lambda p: p.name, reverse=True)


def newest_usable(root: Path) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint, and (path, reason) for each newer one that was skipped."""
    skipped = []
    for path in candidates(root):
        reason = problem(path)
        if reason is None:
            return load(path), skipped
        skipped.append((path, reason))
    return None, skipped


def retain(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints, and broken ones older than those.

    Returns the deleted folders. The newest complete checkpoint is never deleted.
    """
    complete = [p for p in candidates(root) if problem(p) is None]
    if not complete:
        return []
    kept = complete[: max(1, keep)]
    oldest_kept = kept[-1].name
    doomed = [p for p in candidates(root) if p not in kept and p.name < oldest_kept]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
