"""Resume on another world size: a checkpoint written by N ranks continues on M.

What carries over exactly: parameters, optimizer state (AdamW moments, step counts), the LR
schedule, the step count and the data position (a global sample count, data/loader.py). ZeRO
stages 1-3 keep optimizer state (stage 3 also parameters) in per-rank shards, so a checkpoint
written by N ranks is converted once into DeepSpeed's universal checkpoint (`ds_to_universal`),
into `<checkpoint>/universal/`, which every world size loads (`checkpoint.load_universal`).
Stage 0 holds whole states on every rank and loads natively. The global batch is kept by
scaling train.grad_accum (plan/job.py; refused when micro-batch x workers does not divide it). What cannot
carry over: the RNG streams of ranks that no longer exist; a new rank r takes rank r mod N's.

`train.resume=<folder>` also takes a universal checkpoint converted by hand, once trusted
(`train.trust_checkpoint=true`: its hashes are recorded then and checked on every resume, train/resume.py); it
records no data position, which is then derived from its step at the current world size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.errors import TrainingError
from orchestrator.machine import available_cpus
from orchestrator.rundir import checkpoints as checkpoint

UNIVERSAL = "universal"
MODEL_STATES = "mp_rank_00_model_states.pt"


def needs_universal(found: checkpoint.Checkpoint, world: int) -> bool:
    """A sharded (ZeRO 1-3) checkpoint of another world size, or a universal folder given by hand."""
    return found.meta.get("universal_only", False) or (
        found.world_size != world and found.meta.get("zero_stage", 0) > 0)


def deepspeed_location(found: checkpoint.Checkpoint, world: int) -> tuple[Path, str]:
    """(checkpoint dir, tag) DeepSpeed loads this world size's states from."""
    if found.meta.get("universal_only"):
        return found.path.parent, found.path.name
    if needs_universal(found, world):
        return found.path, UNIVERSAL
    return found.path.parent, found.tag


def is_universal_folder(path: Path) -> bool:
    """What `ds_to_universal` writes: a zero/ folder of per-parameter states beside the model-state files."""
    return (path / "zero").is_dir() and any(path.glob("*model_states.pt"))


def hand_converted(path: Path) -> checkpoint.Checkpoint:
    """A universal checkpoint someone converted: its step comes from DeepSpeed's own record in it (a pickle: the
    caller has the user's word that the folder is theirs, train/resume.py)."""
    import torch

    states = sorted(path.glob("*model_states.pt"))
    step = int(torch.load(states[0], map_location="cpu", weights_only=False)["global_steps"])
    return checkpoint.Checkpoint(path=path, step=step, world_size=0, meta={"step": step, "universal_only": True})


def ensure_universal(found: checkpoint.Checkpoint) -> Path:
    """Convert `found` to a universal checkpoint once, into <checkpoint>/universal/, and say so.

    The conversion runs DeepSpeed's converter in a child process (it forks worker pools, which a
    process running Ray must not), writes into universal.tmp and renames it only when done, with a
    manifest of hashes; a later resume reuses it after checking them.
    """
    target = found.path / UNIVERSAL
    if target.is_dir() and checkpoint.problem(target, verify=True, marker=False) is None:
        print(f"using the universal checkpoint converted earlier: {target}", flush=True)
        return target
    print(f"converting {found.path} (written by {found.world_size} ranks) to a universal checkpoint in "
          f"{target}, once", flush=True)
    staging = found.path / f"{UNIVERSAL}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    workers = str(max(1, min(4, available_cpus())))
    result = subprocess.run(
        [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(found.path),
         "--output_folder", str(staging), "--inject_missing_state", "--num_extract_workers", workers,
         "--num_merge_workers", workers],
        capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    (found.path / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; we name the folder
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TrainingError(f"converting {found.path} to a universal checkpoint failed: {tail[0]}")
    checkpoint.write_manifest(staging, {"step": found.step, "converted_from_world_size": found.world_size})
    os.replace(staging, target)
    return target


def describe(found: checkpoint.Checkpoint, world: int) -> str:
    """One line on what the change of world size keeps, for the driver to print."""
    n = found.world_size
    rng = (f"ranks {n}..{world - 1} start from the RNG streams of ranks (r mod {n})" if world > n else
           f"the RNG streams of ranks {world}..{n - 1} end")
    return (f"elastic resume: step {found.step} was written by {n} rank(s), continuing on {world}: parameters, "
            f"optimizer state, LR schedule and data position carry over; {rng}")


def rank_state_source(found: checkpoint.Checkpoint, rank: int) -> Path | None:
    """The per-rank state file this rank restores (RNG streams and data position), or None when the
    checkpoint has none (a hand-converted universal one)."""
    if found.meta.get("universal_only"):
        return None
    return checkpoint.rank_state_file(found.path, rank % found.world_size)

