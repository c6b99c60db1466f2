"""The one line a failed job ends with: out of memory and unplaceable restarts are named as such."""

from __future__ import annotations

import json

from orchestrator.train import failures


class WorkerGroupError(Exception):
    def __init__(self, worker_failures: dict):
        super().__init__("Training failed due to worker errors")
        self.worker_failures = worker_failures


class ControllerError(Exception):
    def __init__(self, controller_failure: Exception):
        super().__init__("Training failed due to controller error")
        self.controller_failure = controller_failure


class WorkerGroupStartupTimeoutError(Exception):
    pass


def test_a_worker_killed_by_the_memory_monitor_is_named_out_of_memory(tmp_path):
    died = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker\n"
                        "Task was killed due to the node running low on memory. Memory on the node was 23GB / 24GB")
    line = failures.reason(WorkerGroupError({1: died}), tmp_path, 300, 2, watchdog=None)
    assert line.startswith("out of memory (OOM)") and "running low on memory" in line


def test_an_unplaceable_restart_names_the_newest_checkpoint_to_resume_from(tmp_path):
    step = tmp_path / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text(json.dumps({"step": 10, "world_size": 2, "files": {}}))
    (step / "COMPLETE").write_text("10")
    error = ControllerError(WorkerGroupStartupTimeoutError("timed out"))
    line = failures.reason(error, tmp_path, 20, 2, watchdog="rank 1 made no progress")
    assert "could not place 2 workers within cluster.join_timeout_s=20s" in line
    assert "the newest complete checkpoint is step 10" in line


def test_otherwise_the_watchdogs_verdict_or_the_root_cause(tmp_path):
    error = WorkerGroupError({0: ValueError("bad\nthe last line")})
    assert failures.reason(error, tmp_path, 20, 2, watchdog=None) == "rank 0: ValueError: the last line"
    assert failures.reason(error, tmp_path, 20, 2, watchdog="rank 1 made no progress") == "rank 1 made no progress"


def test_a_controller_the_watchdog_ended_while_starting_workers_is_a_placement_failure(tmp_path):
    """After a node loss Ray Train's controller can hang past its own start timeout; the watchdog ends it."""
    ended = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: TrainController")
    overdue = "Ray Train's controller was still starting the worker group 81s later (in SchedulingState, limit 80s)"
    line = failures.reason(ended, tmp_path, 20, 2, watchdog=overdue, unstarted=True)
    assert line.startswith("the cluster could not place 2 workers within cluster.join_timeout_s=20s")
    assert overdue in line and "no checkpoint was written yet" in line


def test_a_write_that_found_the_disk_full_names_the_filesystem_its_free_space_and_where_to_resume(tmp_path):
    """The ranks check for room before each checkpoint (train/room.py); a disk another process filled meanwhile
    still fails a write, and torch's writer loses the errno on the way: both read as a full disk."""
    import errno

    step = tmp_path / "checkpoints" / "step_00000020"
    step.mkdir(parents=True)
    (step / "manifest.json").write_text(json.dumps({"step": 20, "world_size": 2, "files": {}}))
    (step / "COMPLETE").write_text("20")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))
    for error in (full, RuntimeError("[Errno 28] No space left on device")):
        line = failures.reason(WorkerGroupError({0: error}), tmp_path, 20, 2, watchdog=None)
        assert line.startswith(f"no space left on the filesystem of {tmp_path} (") and " free)" in line
        assert "the newest complete checkpoint (step 20)" in line and "run_dir=<the copy>" in line
