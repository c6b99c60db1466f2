"""Stop requests that reach a worker process directly (a scheduler signalling every process).

Every Ray worker process of our jobs installs it as it starts (launch/worker_process.py, Ray's job-level
`worker_process_setup_hook`: signal handlers can only be set from a process's main thread, and Ray Train runs
the loop in another one); the training loop reads `requested()`.
SIGUSR1 and SIGTERM set a flag; the loop shares it with all ranks at the next step, and they
checkpoint and stop together. Ray installs its own SIGTERM handler (exit at once) when the
worker's task loop starts, after this hook; we keep ours by re-installing it through the
function Ray uses for that.

The same hook makes every worker process end itself once the raylet that started it (its parent) is gone:
Ray's core worker does not always notice, and a training worker left alive on a node whose raylet died keeps
its peers waiting in a collective that would otherwise fail at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_requested = threading.Event()


def _on_signal(signum, frame) -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


ORPHAN_CHECK_S = 1.0


def _end_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    print(f"this node's raylet (pid {parent}) is gone: ending Ray worker process {os.getpid()}", file=sys.stderr,
          flush=True)
    os._exit(1)


def install() -> None:
    threading.Thread(target=_end_when_orphaned, args=(os.getppid(),), name="end-when-orphaned", daemon=True).start()
    signal.signal(signal.SIGUSR1, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    import ray._private.utils as ray_utils

    # Ray's worker main loop calls set_sigterm_handler(exit_now) after setup hooks run.
    ray_utils.set_sigterm_handler = lambda handler: signal.signal(signal.SIGTERM, _on_signal)
