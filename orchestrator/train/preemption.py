"""Stop signals to the driver, at any moment of a command.

- Before training starts (Ray starting, data preparation, the workers loading the model): SIGTERM or SIGINT
  ends the command at once, there being nothing to checkpoint, by raising `Interrupted` in the main thread, so
  every cleanup on the way out runs (Ray's shutdown, the data cache's half-built entry).
- While it trains: SIGTERM, SIGUSR1 (a scheduler's preemption notice) or SIGINT becomes a stop request in the
  run directory, which the workers honour at their next step (checkpoint, then stop; train/loop.py).
- Then a second Ctrl-C (SIGINT) ends the process now, without a checkpoint, saying so, and the processes it
  started go with it. A second SIGTERM changes nothing: schedulers send one to every process of a job (Slurm,
  after the USR1 our batch script forwards), and the stop under way is the one they ask for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from orchestrator.errors import Interrupted
from orchestrator.launch.reaper import end_descendants
from orchestrator.rundir import RunDir

_ENDING = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def interrupt_on_signals():
    """For the whole command: SIGTERM and SIGINT raise Interrupted (outside `stop_on_signals`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        _second_signal_ends_now()
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in _ENDING}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stop_on_signals(run: RunDir):
    """While training. Only a process's main thread may set handlers: a sweep's trial runs in a Tune thread,
    and its trials are stopped through the stop request directly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        _second_signal_ends_now()
        run.request_stop(signal.Signals(signum).name)
        print(f"{signal.Signals(signum).name} received: checkpointing at the next step, then stopping "
              "(again to stop at once, without a checkpoint)", flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (*_ENDING, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _second_signal_ends_now() -> None:
    signal.signal(signal.SIGINT, _end_now)
    signal.signal(signal.SIGTERM, _already_stopping)


def _already_stopping(signum, frame) -> None:
    print("SIGTERM again: already stopping (Ctrl-C stops at once, without a checkpoint)", file=sys.stderr,
          flush=True)


def _end_now(signum, frame) -> None:
    print(f"{signal.Signals(signum).name} again: stopping now, without a checkpoint", file=sys.stderr, flush=True)
    end_descendants()
    os._exit(128 + signum)
