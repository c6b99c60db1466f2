"""The watchdog's judgement: whom it blames when ranks stop making progress, and what it says."""

from orchestrator.train.watchdog import SILENT_AFTER_S, ProgressBoard, start_overdue, verdict

TIMEOUT = 10.0


def board_at(clock, monkeypatch):
    monkeypatch.setattr("orchestrator.train.watchdog.time.monotonic", lambda: clock[0])
    return ProgressBoard()


def test_ranks_that_progress_are_left_alone(monkeypatch):
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    for second in range(60):
        clock[0] = float(second)
        for rank in (0, 1):
            board.report(rank, 100 + rank, 1.0, "node", second, "step", marks=second)
    assert verdict(*board.snapshot(), TIMEOUT) is None


def test_a_frozen_rank_is_blamed_and_the_waiting_rank_named(monkeypatch):
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    board.report(0, 100, 1.0, "node-a", 7, "step", marks=20)
    board.report(1, 101, 1.0, "node-b", 7, "step", marks=20)  # then SIGSTOP: rank 1 never reports again
    for second in range(1, 12):
        clock[0] = float(second)
        board.report(0, 100, 1.0, "node-a", 8, "sync", marks=21)  # rank 0 waits in the all-reduce
    found = verdict(*board.snapshot(), TIMEOUT)
    assert found is not None and [r.rank for r in found.blamed] == [1]
    assert found.message.startswith("rank 1 made no progress for 11s (train.collective_timeout_s=10): "
                                    "rank 1 stopped responding (pid 101, node node-b)")
    assert "the others were waiting: rank 0 at step 8 (the per-step loss all-reduce)" in found.message


def test_nothing_is_said_before_the_timeout(monkeypatch):
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    board.report(0, 100, 1.0, "n", 3, "checkpoint", marks=5)
    board.report(1, 101, 1.0, "n", 3, "checkpoint", marks=5)
    clock[0] = TIMEOUT - 0.5
    board.report(0, 100, 1.0, "n", 3, "checkpoint", marks=5)
    assert verdict(*board.snapshot(), TIMEOUT) is None  # rank 1 is silent, but no one has waited long enough


def test_a_live_rank_stuck_elsewhere_is_blamed_as_the_one_behind(monkeypatch):
    """Both processes answer, but rank 2 never reaches the collective the others wait in."""
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    for second in range(15):
        clock[0] = float(second)
        board.report(0, 100, 1.0, "n", 5, "sync", marks=9)
        board.report(1, 101, 1.0, "n", 5, "sync", marks=9)
        board.report(2, 102, 1.0, "n", 5, "step", marks=8)
    found = verdict(*board.snapshot(), TIMEOUT)
    assert [r.rank for r in found.blamed] == [2]
    assert "rank 2 is stuck at step 5 (forward/backward" in found.message
    assert "ranks 0, 1 at step 5 (the per-step loss all-reduce)" in found.message


def test_a_collective_no_rank_leaves_blames_every_rank(monkeypatch):
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    for second in range(12):
        clock[0] = float(second)
        for rank in (0, 1):
            board.report(rank, 100 + rank, 1.0, "n", 4, "eval", marks=3)
    found = verdict(*board.snapshot(), TIMEOUT)
    assert [r.rank for r in found.blamed] == [0, 1] and found.message.startswith("ranks 0, 1 made no progress")


def test_a_restarted_worker_starts_a_fresh_clock_and_forgotten_ranks_are_gone(monkeypatch):
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    board.report(0, 100, 1.0, "n", 9, "step", marks=30)
    clock[0] = 20.0
    board.report(0, 200, 2.0, "n", 0, "setup", marks=0)  # Ray Train restarted the group: a new process
    assert verdict(*board.snapshot(), TIMEOUT) is None
    board.forget([200])
    assert board.snapshot()[0] == []


def test_silence_alone_is_not_blame_when_every_rank_is_silent(monkeypatch):
    """When no rank reports (the whole node is frozen), the verdict falls back to the ranks behind."""
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    board.report(0, 100, 1.0, "n", 6, "sync", marks=4)
    board.report(1, 101, 1.0, "n", 6, "step", marks=3)
    clock[0] = TIMEOUT + SILENT_AFTER_S
    found = verdict(*board.snapshot(), TIMEOUT)
    assert [r.rank for r in found.blamed] == [1]


def test_a_controller_starting_a_worker_group_past_the_limit_is_overdue(monkeypatch):
    clock = [0.0]
    board = board_at(clock, monkeypatch)
    assert start_overdue(*board.controller_snapshot(), 80) is None  # no controller yet
    board.controller("RunningState", 7, 1.0, "n")
    clock[0] = 500.0
    assert start_overdue(*board.controller_snapshot(), 80) is None  # running for long is what training does
    board.controller("RestartingState", 7, 1.0, "n")  # a rank failed: the group is torn down and placed again
    clock[0] = 540.0
    board.controller("SchedulingState", 7, 1.0, "n")
    clock[0] = 580.0
    assert start_overdue(*board.controller_snapshot(), 80) is None  # 80 s into this start
    clock[0] = 581.0
    line = start_overdue(*board.controller_snapshot(), 80)
    assert line == ("Ray Train's controller was still starting the worker group 81s later "
                    "(in SchedulingState, limit 80s), so it was ended")


def test_a_controller_in_this_process_is_never_overdue(monkeypatch):
    """A local run keeps Ray Train's controller in the driver: ending it would end the command itself."""
    import os

    clock = [0.0]
    board = board_at(clock, monkeypatch)
    board.controller("SchedulingState", os.getpid(), 1.0, "n")
    clock[0] = 500.0
    assert start_overdue(*board.controller_snapshot(), 80) is None
    board.controller("SchedulingState", os.getpid() + 1, 1.0, "n")  # another process: the same start is overdue
    clock[0] = 1000.0
    assert start_overdue(*board.controller_snapshot(), 80) is not None
