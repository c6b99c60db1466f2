"""The resume policy: which checkpoint a command continues from, and what it refuses, before anything starts.

    train.resume=<folder>   that checkpoint (hashes verified), or a universal one converted by hand
    train.resume=never      a fresh start (config/validate.py refuses a run_dir that already holds a run)
    train.resume=auto       the run directory's newest complete checkpoint, if its config.yaml matches this
                            command's except the keys a resume may change (RESUMABLE_CHANGES); damaged
                            checkpoints are skipped with a warning, and refused when none is usable

A checkpoint of another world size continues there (train/elastic.py): its global batch is kept
(plan/job.py) and a sharded checkpoint is converted to a universal one once. Every refusal is a
ConfigError naming the key and the fix. The workers then prefer a newer complete checkpoint of their own
run (a restart after a failure) over the one chosen here (train/worker.py).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config.compose import to_dict
from orchestrator.config.schema import Config
from orchestrator.errors import ConfigError
from orchestrator.rundir import RunDir
from orchestrator.rundir import checkpoints as checkpoint

RESUMABLE_CHANGES = ("train.max_steps", "train.log_every", "train.eval_every", "train.eval_batches",
                     "train.ckpt_every", "train.keep_checkpoints", "train.resume", "train.max_failures",
                     "train.trust_checkpoint",
                     "train.micro_batch_size", "train.grad_accum",  # the global batch is kept (plan/job.py)
                     "train.collective_timeout_s", "logger.", "cluster.", "plan.", "submit.", "run_dir",
                     "data.cache_dir", "data.num_proc", "data.tokenize_on", "zero.offload_", "zero.overlap_comm",
                     "sweep.")
"""Keys that may change between the run that wrote a checkpoint and the command that resumes it (prefixes)."""


def find(cfg: Config, run_dir: Path) -> checkpoint.Checkpoint | None:
    """The checkpoint this command continues from, its hashes verified, or None for a fresh start;
    ConfigError if unusable. `cfg` is the resolved config (what config.yaml records)."""
    import yaml

    from orchestrator.train import elastic

    resume = cfg.train.resume
    if resume not in ("auto", "never"):
        path = Path(resume).expanduser().resolve()
        if elastic.is_universal_folder(path) and not (path / checkpoint.MARKER).exists():
            return _hand_converted(path, resume, cfg.train.trust_checkpoint)
        reason = checkpoint.problem(path, verify=True)
        if reason:
            raise ConfigError([f"train.resume={resume}: not a usable checkpoint: {reason}"])
        return checkpoint.load(path)
    run = RunDir(run_dir)
    if resume == "never" or not run.config.exists():
        return None
    changed = changed_keys(yaml.safe_load(run.config.read_text()), to_dict(cfg))
    if changed:
        raise ConfigError([f"run_dir={run_dir} holds a run with a different config: {', '.join(changed)}; "
                           "keep those values to resume, or pick a new run_dir"])
    found, skipped = checkpoint.newest_usable(run.checkpoints)
    for path, reason in skipped:
        print(f"warning: skipping checkpoint {path}: {reason}", flush=True)
    if found is None and skipped:
        listed = "; ".join(f"{path}: {reason}" for path, reason in skipped)
        raise ConfigError([f"run_dir={run_dir} has checkpoints but none is usable ({listed}); "
                           "fix or remove them, or pick a new run_dir"])
    return found


def _hand_converted(path: Path, resume: str, trusted: bool) -> checkpoint.Checkpoint:
    """A universal checkpoint converted outside the tool: verified against the hashes recorded the first time
    it was trusted; refused, before a byte of it is unpickled, when there are none and it is not trusted."""
    from orchestrator.train import elastic

    if (path / checkpoint.MANIFEST).is_file():
        reason = checkpoint.problem(path, verify=True, marker=False)
        if reason:
            raise ConfigError([f"train.resume={resume}: not a usable checkpoint: {reason}"])
        return checkpoint.load(path)
    if not trusted:
        raise ConfigError([f"train.resume={resume}: a universal checkpoint converted by hand carries no manifest "
                           "of hashes, so nothing vouches for its pickle files; if you made it, add "
                           "train.trust_checkpoint=true (its hashes are then recorded and checked on every resume)"])
    found = elastic.hand_converted(path)
    checkpoint.write_manifest(path, {**found.meta, "world_size": 0})
    print(f"train.trust_checkpoint: recorded the hashes of {path} in {checkpoint.MANIFEST}", flush=True)
    return found


def changed_keys(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key=saved (this command: current)` for every key that differs and may not change on a resume."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        full = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{full}.")
        elif a != b and not full.startswith(RESUMABLE_CHANGES):
            changed.append(f"{full}={a} (this command: {b})")
    return changed


def prepare(found: checkpoint.Checkpoint, world: int) -> None:
    """Say what a change of world size keeps, and convert a sharded checkpoint to a universal one for it."""
    from orchestrator.train import elastic

    if found.world_size and found.world_size != world:
        print(elastic.describe(found, world), flush=True)
    if elastic.needs_universal(found, world) and not found.meta.get("universal_only"):
        elastic.ensure_universal(found)
