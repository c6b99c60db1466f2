"""Ends the embedded Ray cluster's processes when the driver that started it dies, even by SIGKILL.

Ray ties its GCS and raylet to the driver (the kernel kills them with it), but the processes they
started (the Train controller, workers, the dashboard's helpers) were seen living on as orphans.
So `watch` starts this module as a small process of its own session, holding one end of a pipe
whose other end only the driver holds. Every POLL_S seconds it notes every process below the cluster's
root processes (pid and start time); when the pipe closes, because the driver exited in
whatever way, it kills each noted process that is still the same process, and their children.
After a clean exit there is nothing left to kill; after a SIGKILL nothing outlives the driver.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys

POLL_S = 5.0
"""Seconds between looks at the cluster's process tree (a look at every second cost 1.4% of a core)."""


def end_descendants() -> None:
    """SIGKILL every process this one started, and theirs (Ray's, half-started ones included)."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=10)


def watch(root_pids: list[int]) -> subprocess.Popen:
    """Start the reaper for these processes (and all they start). It ends when this process does."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__, *map(str, root_pids)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C in the terminal is the driver's to handle, not the reaper's
        close_fds=True,
    )


def _look(known: dict[int, float]) -> dict[int, float]:
    """The noted processes that are still the same processes, with every child they have now."""
    import psutil

    found: dict[int, float] = {}
    for pid, started in known.items():
        try:
            process = psutil.Process(pid)
            if started and process.create_time() != started:
                continue  # gone, and its pid reused by another process
            for member in [process, *process.children(recursive=True)]:
                found[member.pid] = member.create_time()
        except psutil.NoSuchProcess:
            continue
    return found


def main(argv: list[str]) -> None:
    import psutil

    known = _look({int(pid): 0.0 for pid in argv})  # the roots are alive now: take them as they are
    driver = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([driver], [], [], POLL_S)
        if readable and not os.read(driver, 4096):  # EOF: the driver is gone
            break
        known = _look(known)
    for pid in _look(known):
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            continue


if __name__ == "__main__":
    main(sys.argv[1:])
