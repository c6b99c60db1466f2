"""What the driver hands every worker: the resolved job and where it reports. Frozen and picklable (Ray sends
it to each worker), so a worker learns nothing about its job from anywhere else."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.plan.plan import Plan
from orchestrator.rundir.checkpoints import Checkpoint
from orchestrator.train.hooks import HookFactory
from orchestrator.train.startup import Startup


@dataclass(frozen=True)
class WorkerPayload:
    config: dict
    """The resolved config with secrets redacted (config.compose.from_dict rebuilds the Config)."""
    plan: Plan
    deepspeed: dict
    """The DeepSpeed config rendered from config and plan (plan/deepspeed.py)."""
    run_dir: str
    run_id: str
    """The W&B run id, kept across reruns and restarts (RunDir.run_id)."""
    progress_board: str
    """Name of the driver's ProgressBoard actor, which its watchdog reads (train/watchdog.py)."""
    startup: Startup
    """The command's start-up timeline so far; rank 0 adds its phases up to the first step."""
    resume_from: Checkpoint | None = None
    """The checkpoint the driver chose and verified; the loop prefers a newer complete one of its own run."""
    hooks: tuple[HookFactory, ...] = ()
    """Factories of the loop's hooks (train/hooks.py), called on every rank with the Config."""
