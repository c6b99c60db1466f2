"""The clients of the resident launchers (launch/resident.py): a command, or a Ray worker process of a job on
the warm cluster, handed to the launcher of its environment when one runs.

Only the standard library is imported here: a process pays nothing for the attempt. The client passes its
standard streams, directory, environment and arguments, relays the signals it gets (Ctrl-C, SIGTERM, SIGHUP,
a scheduler's SIGUSR1) to the copy that runs it, and exits with the copy's status. When no launcher runs for
its environment, it asks the first launcher to start one for the next time and runs as without it.

A Ray worker reaches this module through the job's runtime environment (`py_executable`, launch/local.py):
the raylet runs `python -m orchestrator.launch.handover <Ray's default_worker.py> <its arguments>`. Only
ranks are handed over; their client also ends itself when the raylet that started it is gone, and its copy
goes with it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
ORPHAN_CHECK_S = 1.0


def hand_over(argv: list[str]) -> int | None:
    """A command line's exit status once a launcher ran it, or None when this process must run it."""
    from orchestrator.launch.resident import NO_LAUNCHER_ENV, SERVED

    if len(argv) < 2 or argv[1] not in SERVED or os.environ.get(NO_LAUNCHER_ENV):
        return None
    return _run_in_a_copy(argv, "command")


def worker_command_prefix() -> str:
    """Ray's `py_executable` for the jobs whose worker processes launchers may run."""
    import shlex

    return f"{shlex.quote(sys.executable)} -m {__name__}"


def _run_in_a_copy(argv: list[str], kind: str) -> int | None:
    from orchestrator.launch import resident

    worker = kind == "worker"
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
               "executable": sys.executable, "started": _process_start(), "kind": kind,
               "nice": os.getpriority(os.PRIO_PROCESS, 0)}
    key = resident.environment_key(kind, sys.executable, sys.path, request["env"])
    own = os.environ.get(resident.JOB_LAUNCHER_ENV) if worker else None  # the job's own (it may be importing)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(resident.socket_name(own or resident.address(key)))
    except OSError:  # none runs for this environment (or it is restarting)
        conn.close()
        if not own:
            _ask_for_a_launcher(request, key, quiet=worker)
        return None
    with conn:
        try:
            resident.send(conn, request, fds=[0, 1, 2])
            answer = resident.receive(conn, max_fds=0)[0]
        except (OSError, ValueError):
            return None
        if "refused" in answer:
            if not worker:
                print(f"note: {answer['refused']}; this command runs without it", file=sys.stderr, flush=True)
            return None
        return _wait(conn, answer["pid"], watch_parent=worker)


def _ask_for_a_launcher(request: dict, key: str, quiet: bool) -> None:
    """Ask the first launcher (`cluster up`'s) to start one for this environment, for the next process."""
    from orchestrator.launch import resident

    if resident.first_launcher_key() == key or not _tell_the_first_launcher(
            {"start_for": {name: request[name] for name in ("kind", "executable", "path", "env")}}):
        return
    if not quiet:
        print("note: the resident launcher was started in another environment (a variable that torch, Ray or "
              "transformers read as they import differs); one for this environment starts for the next command",
              file=sys.stderr, flush=True)


def ask_for_a_rank_launcher(env_vars: dict[str, str]) -> None:
    """A job joining the warm cluster: have the launcher for its ranks start (or found running) before they do,
    so they wait for it instead of starting cold. `env_vars`: what the job adds to the cluster's environment."""
    _tell_the_first_launcher({"start_for_ranks": env_vars})


def _tell_the_first_launcher(message: dict) -> bool:
    from orchestrator.launch import resident

    first = resident.first_launcher_key()
    if first is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(resident.socket_name(resident.address(first)))
            resident.send(conn, message)
    except OSError:
        return False
    return True


def _wait(conn: socket.socket, copy: int, watch_parent: bool) -> int:
    """Relay signals to the copy until it exits; its exit status. A worker's client ends when its raylet does."""
    from orchestrator.launch import resident

    def relay(signum, frame):
        try:
            os.kill(copy, signum)
        except ProcessLookupError:
            pass

    for sig in RELAYED:
        signal.signal(sig, relay)
    parent = os.getppid()
    while watch_parent and not select.select([conn], [], [], ORPHAN_CHECK_S)[0]:
        if os.getppid() != parent:
            os._exit(1)  # the launcher SIGKILLs the copy when this connection closes
    try:
        return resident.receive(conn, max_fds=0)[0]["exit"]
    except (OSError, ValueError, KeyError):
        print("error: the resident launcher ended while it ran this process", file=sys.stderr, flush=True)
        return 1


def _process_start() -> float:
    """When the OS started this process, as psutil.Process().create_time() says (without importing psutil)."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as proc_stat:
        boot = next(int(line.split()[1]) for line in proc_stat if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _ray_worker(argv: list[str]) -> None:
    """`python -m orchestrator.launch.handover default_worker.py ...`: a rank in a copy, or exec'd as Python
    would (the job's other processes, the progress board and Ray Train's helpers, import little)."""
    from orchestrator.launch.worker_process import RANK_IMPORTS

    code = _run_in_a_copy([sys.executable, *argv], "worker") if os.environ.get(RANK_IMPORTS) else None
    if code is None:
        os.execv(sys.executable, [sys.executable, *argv])
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    _ray_worker(sys.argv[1:])
