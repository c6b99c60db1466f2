"""A scheduler's preemption notice to the driver: SIGTERM or SIGUSR1 becomes a stop request in the run
directory, which the workers honour at their next step (checkpoint, then stop; train/loop.py)."""

from __future__ import annotations

import contextlib
import signal
import threading

from orchestrator.rundir import RunDir


@contextlib.contextmanager
def stop_on_signals(run: RunDir):
    """Only a process's main thread may set handlers: a sweep's trial runs in a Tune thread, and its
    trials are stopped through the stop request directly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        run.request_stop(signal.Signals(signum).name)
        print(f"{signal.Signals(signum).name} received: checkpointing at the next step, then stopping", flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
