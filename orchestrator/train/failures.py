"""Why a training job failed, in one line a user can act on.

Ray wraps a worker's death in several layers (Train's WorkerGroupError or ControllerError, Ray's
ActorDiedError, the original exception). Three causes get a line of their own because the fix is
not in the traceback: a worker killed by Ray's memory monitor (out of memory), a worker group
the cluster can no longer place (a node was lost) after train.max_failures restarts, and a full disk.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.paths import disk_full, free_bytes, human_bytes
from orchestrator.rundir import RunDir
from orchestrator.rundir import checkpoints as checkpoint

OOM_MARKS = ("running low on memory", "memory monitor", "OutOfMemoryError")


def reason(error: BaseException, run_dir: Path, join_timeout_s: float, workers: int, watchdog: str | None,
           unstarted: bool = False) -> str:
    """The line for `error`; `watchdog` is the progress watchdog's last verdict, if it ended ranks: it names
    a stalled rank better than the error its ending caused, unless the job then failed for a reason above.
    `unstarted`: the watchdog ended Ray Train's controller because a worker group never started running."""
    chain = _chain(error)
    oom = next((e for e in chain if any(mark in f"{type(e).__name__}: {e}" for mark in OOM_MARKS)), None)
    if oom is not None:
        return (f"out of memory (OOM): Ray's memory monitor killed a process of this job: {_detail(oom)}; "
                "lower train.micro_batch_size, turn on train.activation_checkpointing or CPU offload "
                "(`orchestrator plan` shows the memory), or give the nodes more memory")
    placement = ("WorkerGroupStartupTimeoutError", "WorkerGroupStartupFailedError")
    if unstarted or any(type(e).__name__ in placement for e in chain):
        found, _ = checkpoint.newest_usable(RunDir(run_dir).checkpoints, verify=False)
        resume = (f"the newest complete checkpoint is step {found.step}: rerun with a cluster.num_workers the "
                  "cluster still holds to resume from it (it converts itself to the new world size)"
                  if found else "no checkpoint was written yet")
        why = f" ({watchdog})" if unstarted else ""
        return (f"the cluster could not place {workers} workers within cluster.join_timeout_s={join_timeout_s:g}s "
                f"(a node lost, or its resources taken){why}; {resume}, or add nodes")
    full = disk_full(error) or _says_disk_full(chain)
    if full is not None:
        return out_of_room(f"no space left on the filesystem of {run_dir} ({human_bytes(free_bytes(run_dir))} "
                           f"free): {_worker_failure(error)}", run_dir)
    return watchdog or _worker_failure(error)


def out_of_room(line: str, run_dir: Path) -> str:
    """A full disk's line, and how to go on: make room, or carry the run directory somewhere with room."""
    found, _ = checkpoint.newest_usable(RunDir(run_dir).checkpoints, verify=False)
    where = f"from the newest complete checkpoint (step {found.step})" if found else "from the start"
    return (f"{line}; free space there and rerun the same command, or copy {run_dir} to a filesystem with room "
            f"and rerun with run_dir=<the copy>: it resumes {where}")


def _says_disk_full(chain: list[BaseException]) -> BaseException | None:
    """Errors that crossed a process boundary as text, or that a library re-raised without the errno."""
    return next((e for e in chain if any(mark in str(e) for mark in ("No space left on device",
                                                                      "Disk quota exceeded"))), None)


def _chain(error: BaseException) -> list[BaseException]:
    """The error, the errors it wraps (worker failures, the controller's failure, causes), depth first."""
    found, todo = [], [error]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        todo += [*getattr(current, "worker_failures", {}).values(), getattr(current, "controller_failure", None),
                 current.__cause__]
    return found


def _detail(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return next((line for line in lines if any(mark in line for mark in OOM_MARKS)), lines[0] if lines else "")


def _worker_failure(error: BaseException) -> str:
    failures = getattr(error, "worker_failures", None)
    if failures:
        rank, failure = sorted(failures.items())[0]
        error = failure
        while error.__cause__ is not None:
            error = error.__cause__
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return f"rank {rank}: {type(error).__name__}: {lines[-1] if lines else ''}"
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
