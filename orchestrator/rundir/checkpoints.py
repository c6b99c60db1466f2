"""Checkpoint layout, integrity and retention. Pure file handling: no torch, no DeepSpeed.

    <run_dir>/checkpoints/
      step_00000010/          one folder per checkpoint
        ...                   DeepSpeed's shards, one set per rank (train/engine.py writes them)
        rank_00000.pt, ...    our per-rank state: RNG states and data position
        manifest.json         every file above with its size and sha256; step, tokens, world size,
                              global batch, data position, W&B run id
        COMPLETE              written last, once every rank's files are on disk
        universal/            DeepSpeed's universal checkpoint, made from it when a run resumes on
                              another world size (train/elastic.py), with a manifest of its own
      latest                  names the newest COMPLETE checkpoint; replaced atomically

A checkpoint counts only if its marker exists and every file in its manifest is present with
the recorded size and, when verified, the recorded sha256; anything else (a writer killed
mid-save, a truncated file, a flipped byte, a missing marker) is skipped with a reason, and the
previous complete one is used. The hashes are taken after the save, each rank hashing a
size-balanced share of the files, and checked before DeepSpeed or pickle reads a byte.
Retention never deletes the newest complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from orchestrator.machine import available_cpus

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


def files_of(path: Path) -> dict[str, int]:
    """Every file a checkpoint folder holds (relative name -> bytes), but its marker, manifest and leftovers."""
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*"))
            if f.is_file() and f.name not in (MARKER, MANIFEST) and not f.name.endswith(".tmp")}


def share(files: dict[str, int], rank: int, world: int) -> list[str]:
    """This rank's part of the files to hash: the largest first, each to the least loaded rank, so every
    rank computes the same split and the ranks finish together."""
    loads, mine = [0] * world, []
    for name, size in sorted(files.items(), key=lambda item: (-item[1], item[0])):
        least = loads.index(min(loads))
        loads[least] += size
        if least == rank:
            mine.append(name)
    return mine


def sha256(path: Path, names: list[str], threads: int = 1) -> dict[str, str]:
    """name -> sha256 of path/name. hashlib lets go of the GIL while it hashes, so threads run in parallel."""
    def one(name: str) -> str:
        with open(path / name, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    with ThreadPoolExecutor(max(1, min(threads, len(names) or 1))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def seal(path: Path, meta: dict, digests: dict[str, str]) -> None:
    """Record every file of a fully written checkpoint with its size and sha256 (`digests`, gathered from
    the ranks), then mark it complete and make it `latest`.

    Call once, on one rank, after a barrier that follows every rank's save.
    """
    files = {name: {"bytes": size, "sha256": digests[name]} for name, size in files_of(path).items()}
    _write_atomically(path / MANIFEST, json.dumps({**meta, "files": files}, indent=2))
    _write_atomically(path / MARKER, str(meta["step"]))
    _write_atomically(path.parent / LATEST, path.name)


def write_manifest(path: Path, meta: dict) -> None:
    """A manifest with hashes for a folder one process wrote (a universal checkpoint); no marker."""
    files = files_of(path)
    digests = sha256(path, list(files), threads=available_cpus())
    entries = {name: {"bytes": size, "sha256": digests[name]} for name, size in files.items()}
    _write_atomically(path / MANIFEST, json.dumps({**meta, "files": entries}, indent=2))


def problem(path: Path, verify: bool = False, marker: bool = True) -> str | None:
    """Why this checkpoint cannot be used, or None when it is complete and intact.

    Without `verify` only presence and sizes are checked (instant); with it every file's sha256 too,
    hashed in parallel threads (about a second per GB per core).
    """
    if marker and not (path / MARKER).is_file():
        return "no completion marker (the writer stopped before every rank had saved)"
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return "missing or unreadable manifest.json"
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != entry["bytes"]:
            return f"{name} is truncated or altered ({f.stat().st_size} of {entry['bytes']} bytes)"
    if verify:
        found = sha256(path, list(files), threads=available_cpus())
        for name, entry in files.items():
            if found[name] != entry["sha256"]:
                return f"{name} does not match its sha256 in manifest.json (altered after it was written)"
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


def newest_usable(root: Path, verify: bool = True,
                  trusted: Path | None = None) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint, and (path, reason) for each newer one that was skipped.

    `verify` checks hashes too, except for `trusted`: a checkpoint this command already verified.
    """
    skipped = []
    for path in candidates(root):
        reason = problem(path, verify=verify and path != trusted)
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
