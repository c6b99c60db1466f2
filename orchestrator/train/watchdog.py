"""The progress watchdog: a rank that stops making progress ends the job within train.collective_timeout_s.

Collective backends cannot be trusted to time out. DeepSpeed builds its own process groups (ZeRO's
gradient buckets, parameter gathers) with torch's 30-minute default, and under DeepSpeed gloo's
timeout was seen not to fire at all; a SIGSTOPped or wedged rank then hangs every other rank forever.
So the watchdog trusts nothing but progress:

- each worker marks where it is (`Progress.mark(step, phase)`: a few attribute writes, no I/O), and a
  daemon thread reports the latest mark to the `ProgressBoard`, a small Ray actor, once a second;
- the driver's `Watchdog` thread reads the board once a second. When some rank has made no progress
  for the timeout it blames the ranks whose reports stopped (a frozen or dead process), or else the
  ranks furthest behind, kills the blamed processes (on whatever node they run), and prints one line
  naming them and where the others were waiting;
- Ray Train then sees a worker die and applies its own failure handling: restart the worker group
  from the newest checkpoint (train.max_failures) or fail the job, which the driver reports with
  the watchdog's line.

Ray Train's own wait for a worker group's place (cluster.join_timeout_s) is not enough: after a node
was lost, its controller was seen to hang on past it (1 CI run of 5). So the controller also reports
each state it enters (`ray_trainer.ControllerReporter`), and a worker group still not running
`start_limit_s` after the controller began to start it has its controller ended: `fit()` then fails.

Times are the board's clock (when it received a report), so nodes' clocks need not agree.
`verdict` is pure and unit-tested; the board is a plain class that the driver wraps as an actor.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

PHASES = {
    "setup": "setting up (model, DeepSpeed engine, checkpoint load)",
    "step": "forward/backward/optimizer step (ZeRO's collectives)",
    "sync": "the per-step loss all-reduce",
    "eval": "evaluation",
    "checkpoint": "saving a checkpoint",
    "finish": "saving the final model",
}
"""Where a rank can be, in the order a step goes through them (the key is what the loop marks)."""

STARTING = ("InitializingState", "SchedulingState", "ReschedulingState", "RestartingState", "ResizingState")
"""Ray Train controller states in which a worker group is being placed and started, not yet running."""

REPORT_EVERY_S = 1.0
SILENT_AFTER_S = 5.0
"""A rank that has not reported for this long is frozen or dead (reports come every REPORT_EVERY_S)."""


@dataclass(frozen=True)
class Report:
    """A rank's latest report, as the board holds it (seen_at, progress_at: the board's clock)."""

    rank: int
    pid: int
    started: float  # process create time: a kill never hits a reused pid
    node_id: str
    step: int
    phase: str
    marks: int
    seen_at: float
    progress_at: float

    def where(self) -> str:
        return f"step {self.step} ({PHASES.get(self.phase, self.phase)})"

    def position(self) -> tuple[int, int]:
        return self.step, list(PHASES).index(self.phase) if self.phase in PHASES else len(PHASES)


@dataclass(frozen=True)
class ControllerReport:
    """The state Ray Train's controller is in, since when (the board's clock), and its process."""

    state: str
    since: float
    pid: int
    started: float
    node_id: str


def start_overdue(controller: ControllerReport | None, now: float, limit_s: float) -> str | None:
    """None unless the controller has been starting a worker group for longer than limit_s; else why it is ended.
    A controller in this very process (a lean local run: train/ray_trainer.py) is left to Ray Train's own start
    timeout: ending it would end the command."""
    if controller is None or controller.state not in STARTING or now - controller.since <= limit_s:
        return None
    if controller.pid == os.getpid():
        return None
    return (f"Ray Train's controller was still starting the worker group {now - controller.since:.0f}s later "
            f"(in {controller.state}, limit {limit_s:g}s), so it was ended")


@dataclass(frozen=True)
class Verdict:
    blamed: list[Report]
    message: str


def verdict(reports: list[Report], now: float, timeout_s: float) -> Verdict | None:
    """None while every rank progresses; else whom to end, and the line that says why.

    Blamed: the ranks that stopped reporting (their process is frozen or gone) when some still
    report; otherwise the ranks furthest behind (the others wait for them in a collective); when
    all stand at the same place, all of them (a collective that never completes).
    """
    stalled = [r for r in reports if now - r.progress_at > timeout_s]
    if not stalled:
        return None
    silent = [r for r in reports if now - r.seen_at > SILENT_AFTER_S]
    if silent and len(silent) < len(reports):
        blamed = silent
    else:
        last = min(r.position() for r in reports)
        blamed = [r for r in reports if r.position() == last]
    waiting = [r for r in reports if r not in blamed]
    idle = int(now - min(r.progress_at for r in blamed))
    who = ", ".join(str(r.rank) for r in sorted(blamed, key=lambda r: r.rank))
    details = [f"rank {r.rank} stopped responding (pid {r.pid}, node {r.node_id[:8]}), last report at {r.where()}"
               if r in silent else f"rank {r.rank} is stuck at {r.where()} (pid {r.pid}, node {r.node_id[:8]})"
               for r in sorted(blamed, key=lambda r: r.rank)]
    line = (f"rank{'s' if len(blamed) > 1 else ''} {who} made no progress for {idle}s "
            f"(train.collective_timeout_s={timeout_s:g}): {'; '.join(details)}")
    if waiting:
        line += "; the others were waiting: " + "; ".join(_group_by_place(waiting))
    return Verdict(blamed, line)


def _group_by_place(reports: list[Report]) -> list[str]:
    places: dict[str, list[int]] = {}
    for r in sorted(reports, key=lambda r: r.rank):
        places.setdefault(r.where(), []).append(r.rank)
    return [f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} at {where}"
            for where, ranks in places.items()]


class ProgressBoard:
    """Holds each rank's latest report. Run as a Ray actor (0 CPUs) owned by the driver's job."""

    def __init__(self) -> None:
        self._reports: dict[int, Report] = {}
        self._controller: ControllerReport | None = None
        self._failure: str | None = None

    def report(self, rank: int, pid: int, started: float, node_id: str, step: int, phase: str, marks: int) -> None:
        now = time.monotonic()
        old = self._reports.get(rank)
        moved = old is None or old.pid != pid or old.marks != marks  # a new process, or progress
        self._reports[rank] = Report(rank, pid, started, node_id, step, phase, marks, now,
                                     now if moved else old.progress_at)

    def controller(self, state: str, pid: int, started: float, node_id: str) -> None:
        """`since` spans consecutive starting states (restarting, then scheduling): one start, one clock."""
        old = self._controller
        same = old is not None and old.pid == pid and (old.state == state or {old.state, state} <= set(STARTING))
        since = old.since if same else time.monotonic()
        self._controller = ControllerReport(state, since, pid, started, node_id)

    def controller_snapshot(self) -> tuple[ControllerReport | None, float]:
        """`start_overdue(*board.controller_snapshot(), limit_s)`."""
        return self._controller, time.monotonic()

    def fail(self, line: str) -> None:
        """A rank ended the job on purpose (train/room.py: no room on disk); the driver fails with this line."""
        self._failure = line

    def failure(self) -> str | None:
        return self._failure

    def forget(self, pids: list[int]) -> None:
        """Drop the reports of processes that finished, or that the watchdog has dealt with."""
        self._reports = {rank: r for rank, r in self._reports.items() if r.pid not in pids}

    def snapshot(self) -> tuple[list[Report], float]:
        """The reports and the board's time now: `verdict(*board.snapshot(), timeout_s)`."""
        return list(self._reports.values()), time.monotonic()


class Progress:
    """Worker side: `mark` records where this rank is; a daemon thread reports it to the board."""

    def __init__(self, board, rank: int, node_id: str) -> None:
        import psutil

        self._board, self._rank, self._node_id = board, rank, node_id
        self._pid = os.getpid()
        self._started = psutil.Process(self._pid).create_time()
        self.step, self.phase, self.marks = 0, "setup", 0
        self._done = threading.Event()
        self._send()
        threading.Thread(target=self._report_loop, name="progress-report", daemon=True).start()

    def mark(self, step: int, phase: str) -> None:
        self.step, self.phase, self.marks = step, phase, self.marks + 1

    def fail(self, line: str) -> None:
        import ray

        ray.get(self._board.fail.remote(line))

    def close(self) -> None:
        """This rank is done: stop reporting, and take its report off the board."""
        self._done.set()
        self._board.forget.remote([self._pid])

    def _send(self) -> None:
        self._board.report.remote(self._rank, self._pid, self._started, self._node_id, self.step, self.phase,
                                  self.marks)

    def _report_loop(self) -> None:
        while not self._done.wait(REPORT_EVERY_S):
            try:
                self._send()
            except Exception:  # the board is gone: the driver is ending the job
                return


def _end_process(pid: int, started: float) -> bool:
    """SIGKILL the process if it is still the one that reported (a stopped process dies too)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 1:
            return False
        process.kill()
        return True
    except psutil.NoSuchProcess:
        return False


class Watchdog:
    """Driver side: reads the board, ends the blamed ranks' processes (or an overdue controller), remembers
    the last verdict."""

    def __init__(self, board, timeout_s: float, start_limit_s: float) -> None:
        self._board, self._timeout_s, self._start_limit_s = board, timeout_s, start_limit_s
        self.last: str | None = None
        self.ended_controller = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="progress-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _watch(self) -> None:
        import ray

        end = ray.remote(num_cpus=0, max_retries=0)(_end_process)
        while not self._stop.wait(REPORT_EVERY_S):
            try:
                reports, now = ray.get(self._board.snapshot.remote(), timeout=30)
                controller, now = ray.get(self._board.controller_snapshot.remote(), timeout=30)
            except Exception:  # Ray is shutting down, or busy: look again next time
                continue
            overdue = start_overdue(controller, now, self._start_limit_s)
            if overdue is not None and not self.ended_controller:
                _ended(end, controller.node_id, controller.pid, controller.started)
                self.ended_controller, self.last = True, overdue
                print(f"watchdog: {overdue}", file=sys.stderr, flush=True)
            found = verdict(reports, now, self._timeout_s)
            if found is None:
                continue
            ended = [_ended(end, r.node_id, r.pid, r.started) for r in found.blamed]
            message = found.message
            if None in ended:
                # A blamed rank's node does not answer (its raylet died): that rank cannot be ended, and the
                # others would wait on it forever, so they are ended instead and Ray Train restarts or fails.
                lost = [r for r, e in zip(found.blamed, ended, strict=True) if e is None]
                others = [r for r in reports if r not in found.blamed]
                ended += [_ended(end, r.node_id, r.pid, r.started) for r in others]
                found = Verdict(message=message, blamed=[*found.blamed, *others])
                message += (f"; the node of rank(s) {', '.join(str(r.rank) for r in lost)} does not answer "
                            "(lost), so the other ranks were ended")
            # Whatever the outcome, this generation of workers is dealt with: a restart reports afresh.
            self._board.forget.remote([r.pid for r in reports])
            if any(ended):  # blamed processes that were already gone are Ray's to report, not ours
                self.last = message
                print(f"watchdog: {message}; ended rank(s) "
                      f"{', '.join(str(r.rank) for r, e in zip(found.blamed, ended, strict=True) if e)}",
                      file=sys.stderr, flush=True)


def _ended(end, node_id: str, pid: int, started: float) -> bool | None:
    """`_end_process` on the process's own node (directly when it is this one, which needs nothing of Ray): True
    when it ended the process, False when it was gone already, None when its node does not answer (dead, or its
    raylet is: the process may live on, orphaned)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if node_id == ray.get_runtime_context().get_node_id():
        return _end_process(pid, started)
    task = end.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    try:
        return ray.get(task.remote(pid, started), timeout=60)
    except Exception:
        return None
