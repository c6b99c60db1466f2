"""A resident launcher's process (launch/resident.py says what they are for): import, listen, fork a copy of
itself per process handed to it, and make each copy the process it replaces.

`python -m orchestrator.launch.fork_server command|worker [--first | --at NAME]`: the first launcher (`cluster
up` starts it) serves commands and starts the others, one per environment its clients come with, at most
`MAX_LAUNCHERS`; `--at`: the launcher of one command's own cluster, for its ranks (resident.start_for_job).
One loop watches everything without threads (threads and fork do not mix): the listening socket, each
client's connection (closed: the client is gone) and each copy's pidfd (readable: the copy exited).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time

from orchestrator.launch.resident import (
    COMMAND_STARTED_ENV,
    START_TIMEOUT_S,
    address,
    cache_root,
    environment_key,
    gpu_process,
    receive,
    send,
    socket_name,
    write_record,
)

PRELOAD = {
    "command": ("torch",  # before Ray: the other order makes oneMKL fail to load in a Ray driver (train/driver.py)
                "ray", "ray.train", "ray.train.torch", "deepspeed", "transformers", "wandb", "orchestrator.cli",
                "orchestrator.train_command", "orchestrator.train.driver", "orchestrator.train.loop",
                "orchestrator.train.ray_trainer", "orchestrator.train.watchdog", "orchestrator.plan.command"),
    # Not Ray: its C++ settings are read from the environment once, as it loads, and a worker's (its job id)
    # differ from one job to the next. Ray and Ray Train load in each copy (about 1 s); the rest is what a
    # rank imports before it builds its engine (about 3 s).
    "worker": ("torch", "numpy", "deepspeed", "deepspeed.runtime.engine", "transformers",
               "transformers.models.gpt2.modeling_gpt2", "transformers.models.llama.modeling_llama",
               "transformers.models.bert.modeling_bert", "wandb", "orchestrator.train.worker",
               "orchestrator.train.engine", "orchestrator.models.registry", "orchestrator.data.loader",
               "orchestrator.train.checkpoint_writer", "orchestrator.tasks", "orchestrator.train.memory_probe",
               "orchestrator.train.throughput"),
}
"""What a launcher imports before it serves: a command's driver, or a Ray worker process (a rank)."""

MAX_LAUNCHERS = 4
PARENT_CHECK_S = 1.0
"""How often a job's own launcher checks that the command that started it still runs."""
CLIENT_GONE_GRACE_S = 60
"""A command killed outright (SIGKILL): its copy gets SIGTERM (checkpoint and stop), then SIGKILL after this.
A Ray worker's copy is SIGKILLed at once, as the worker process itself would have been."""


def _loaded_files() -> dict[str, tuple[int, int]]:
    """Every imported module's source file: (mtime_ns, size). About 3,500 files, stat'ed in about 20 ms."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and os.path.isabs(path):
            try:
                status = os.stat(path)
            except OSError:
                continue
            files[path] = (status.st_mtime_ns, status.st_size)
    return files


class _Copy:
    def __init__(self, pid: int, conn: socket.socket, worker: bool):
        self.pid, self.conn, self.worker = pid, conn, worker
        self.pidfd = os.pidfd_open(pid)
        self.kill_at: float | None = None


class Launcher:
    def __init__(self, key: str, env: dict[str, str], path: list[str], first: bool):
        self.key, self.started_with, self.path, self.first = key, env, path, first
        # Ray adds variables of its own as it imports; a fresh process would have them too.
        self.set_by_imports = {name: value for name, value in os.environ.items() if env.get(name) != value}
        self.files = _loaded_files()
        self.copies: dict[int, _Copy] = {}
        self.stale = ""
        self.starting: dict[str, float] = {}  # launchers the first one started: key -> when

    def refusal(self, request: dict) -> str:
        """Why this launcher must not run the process ('' when it may)."""
        if not self.stale:
            for path, seen in self.files.items():
                try:
                    status = os.stat(path)
                    now = (status.st_mtime_ns, status.st_size)
                except OSError:
                    now = None
                if now != seen:
                    self.stale = f"{path} changed since the resident launcher started; it restarts with the new code"
                    break
        if self.stale:
            return self.stale
        if request["kind"] == "worker" and gpu_process(request["env"]):
            return "a process that sees a GPU starts fresh"
        if environment_key(request["kind"], request["executable"], request["path"], request["env"]) != self.key:
            return "the environment differs from the resident launcher's"
        return ""

    def start_for_ranks(self, env_vars: dict[str, str]) -> None:
        """A launcher for the ranks of a job joining the warm cluster, before they start: their environment is
        the cluster's (started with the first launcher's, by `cluster up`) and what the job adds to it."""
        self.start_another({"kind": "worker", "executable": sys.executable, "path": self.path,
                            "env": {**self.started_with, **env_vars}})

    def start_another(self, request: dict) -> None:
        """Start a launcher for the request's environment (the first launcher only), unless one runs or starts."""
        key = environment_key(request["kind"], request["executable"], request["path"], request["env"])
        if not self.first or self.stale or key == self.key or time.monotonic() < self.starting.get(key, 0) or \
                (request["kind"] == "worker" and gpu_process(request["env"])):
            return
        if _listening(address(key)):
            return
        if len(self.starting) + 1 >= MAX_LAUNCHERS:
            print(f"resident launcher: not starting one more for {key}: {MAX_LAUNCHERS} run", flush=True)
            return
        self.starting[key] = time.monotonic() + START_TIMEOUT_S
        log = os.open(cache_root() / f"launcher-{key}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        child = os.fork()
        if child == 0:  # fork twice: the new launcher is nobody's child to reap, and stays in this session
            try:
                if os.fork() == 0:
                    os.setpgid(0, 0)
                    os.chdir(cache_root())
                    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    os.execve(request["executable"], [request["executable"], "-m", "orchestrator.launch.fork_server",
                                                      request["kind"]], request["env"])
            finally:
                os._exit(0)
        os.close(log)
        os.waitpid(child, 0)
        print(f"resident launcher: started one for another environment ({key})", flush=True)


def _listening(name: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(socket_name(name))
            return True
        except OSError:
            return False


def serve(kind: str, first: bool, at: str | None) -> None:
    """A launcher's life: import, listen, fork a copy per process; restart itself once stale and idle.

    It listens before it imports: a client that comes meanwhile waits for it rather than start cold (the
    imports are the same, and done once for all). `at`: a job's own launcher (resident.start_for_job), at this
    name, which ends when the command that started it does."""
    import importlib
    import selectors

    if at:  # in the command's process group: Ctrl-C and a scheduler's SIGTERM are for the command and its ranks,
        for sig in (signal.SIGINT, signal.SIGTERM):  # which stop with a checkpoint; it ends when the command does
            signal.signal(sig, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    env = dict(os.environ)
    key = environment_key(kind, sys.executable, sys.path, env)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:  # first: the name is the lock that keeps one launcher per environment (a duplicate ends here)
        listener.bind(socket_name(at or address(key)))
    except OSError:
        print(f"resident launcher: one for this environment ({key}) already runs", flush=True)
        return
    listener.listen(16)
    path = list(sys.path)
    for name in PRELOAD[kind]:
        importlib.import_module(name)
    if kind == "worker" and "ray" in sys.modules:
        print(f"resident launcher: not serving Ray workers: {PRELOAD[kind]} imported Ray", flush=True)
        return
    launcher = Launcher(key, env, path, first)
    if first:
        write_record(key)
    print(f"resident launcher {os.getpid()}: ready, environment {key} ({len(launcher.files)} source files)",
          flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    parent = os.getppid()
    while not at or os.getppid() == parent:
        due = [copy.kill_at for copy in launcher.copies.values() if copy.kill_at]
        wait = max(0.0, min(due) - time.monotonic()) if due else None
        if at:
            wait = PARENT_CHECK_S if wait is None else min(wait, PARENT_CHECK_S)
        for selected, _ in selector.select(wait):
            try:
                if selected.fileobj is listener:
                    _accept(launcher, listener, selector)
                elif selected.fileobj is selected.data.conn:
                    _client_gone(selected.data, selector)
                else:
                    _copy_ended(launcher, selected.data, selector)
            except Exception:  # one client's trouble must not end the launcher
                import traceback

                traceback.print_exc()
        for copy in launcher.copies.values():
            if copy.kill_at and time.monotonic() >= copy.kill_at:
                os.kill(copy.pid, signal.SIGKILL)
                copy.kill_at = None
        if launcher.stale and not launcher.copies and not at:
            print(f"resident launcher: {launcher.stale}", flush=True)
            listener.close()
            os.execve(sys.executable, [sys.executable, "-m", "orchestrator.launch.fork_server", *sys.argv[1:]],
                      launcher.started_with)


def _accept(launcher: Launcher, listener: socket.socket, selector) -> None:
    import selectors

    conn, _ = listener.accept()
    request, fds = _request(conn)
    if request and request.get("start_for"):
        launcher.start_another(request["start_for"])
        request = None
    elif request and request.get("start_for_ranks"):
        launcher.start_for_ranks(request["start_for_ranks"])
        request = None
    elif request and (why := launcher.refusal(request)):
        try:
            send(conn, {"refused": why})
        except OSError:
            pass
        request = None
    if request is None:
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    pid = os.fork()
    if pid == 0:
        selector.close()
        listener.close()
        for copy in launcher.copies.values():
            copy.conn.close()
            os.close(copy.pidfd)
        conn.close()
        _become(request, fds, launcher.set_by_imports)  # never returns
    for fd in fds:
        os.close(fd)
    copy = _Copy(pid, conn, request["kind"] == "worker")
    launcher.copies[pid] = copy
    send(conn, {"pid": pid})
    conn.setblocking(False)
    selector.register(conn, selectors.EVENT_READ, copy)
    selector.register(copy.pidfd, selectors.EVENT_READ, copy)


def _request(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """The client's request and descriptors; no request from another user or a client that sent none in 10 s."""
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():
            return None, []
        conn.settimeout(10)
        return receive(conn)
    except (OSError, ValueError):
        return None, []


def _client_gone(copy: _Copy, selector) -> None:
    """The client ended without its copy (SIGKILL, a lost terminal, a dead raylet): a command's copy stops as if
    preempted, a worker's at once."""
    try:
        if copy.conn.recv(1):
            return
    except BlockingIOError:
        return
    except OSError:
        pass
    selector.unregister(copy.conn)
    if copy.worker:
        os.kill(copy.pid, signal.SIGKILL)
    else:
        os.kill(copy.pid, signal.SIGTERM)
        copy.kill_at = time.monotonic() + CLIENT_GONE_GRACE_S


def _copy_ended(launcher: Launcher, copy: _Copy, selector) -> None:
    _, status = os.waitpid(copy.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        send(copy.conn, {"exit": code if code >= 0 else 128 - code})
    except OSError:
        pass  # the client is gone
    for fileobj in (copy.conn, copy.pidfd):
        try:
            selector.unregister(fileobj)
        except KeyError:
            pass
    copy.conn.close()
    os.close(copy.pidfd)
    del launcher.copies[copy.pid]


def _become(request: dict, fds: list[int], set_by_imports: dict[str, str]) -> None:
    """In the forked copy: take the process's streams, directory, environment and arguments, run it, exit as a
    fresh process would (non-daemon threads joined, exit hooks run, streams flushed)."""
    import importlib
    import traceback

    from orchestrator.launch.process_exit import end_process

    code = 1
    try:
        os.setpgid(0, 0)  # a group of its own: Ray ends a worker by its process group, which must not be ours
        try:
            os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
        except PermissionError:  # the client's niceness (`nice orchestrator train`); only root may lower it
            pass
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _reopen_std_streams(request["env"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**request["env"], **set_by_imports})
        importlib.invalidate_caches()
        if request["kind"] == "worker":
            code = _run_ray_worker(request["argv"][1:])
        else:
            code = _run_command(request)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        end_process(code if isinstance(code, int) else 1)


def _run_command(request: dict) -> int:
    from orchestrator.cli import main

    sys.argv = request["argv"]
    sys.path[0] = request["path"][0]  # the rest is the launcher's, as its imports left it (Ray adds folders)
    os.environ[COMMAND_STARTED_ENV] = repr(request["started"])
    print(f"(the resident launcher runs this command, its imports done: pid {os.getpid()})", file=sys.stderr,
          flush=True)
    return main(request["argv"][1:])


def _run_ray_worker(argv: list[str]) -> int:
    """Ray's worker entry point (`default_worker.py <its arguments>`), as `python` would run the script."""
    import runpy

    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")
    return 0


def _reopen_std_streams(env: dict[str, str]) -> None:
    """New sys.stdin/stdout/stderr over the process's descriptors, buffered as Python buffers them at start-up:
    line by line on a terminal (stderr always), in blocks to a file or pipe, not at all under PYTHONUNBUFFERED."""
    import io

    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    encoding = env.get("PYTHONIOENCODING", "").split(":")[0] or sys.__stdout__.encoding

    def text(fd: int, errors: str = "strict"):
        binary = open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)
        return io.TextIOWrapper(binary, encoding=encoding, errors=errors, line_buffering=fd == 2 or os.isatty(fd),
                                write_through=unbuffered)

    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, closefd=False)
    sys.stdout = sys.__stdout__ = text(1)
    sys.stderr = sys.__stderr__ = text(2, errors="backslashreplace")


if __name__ == "__main__":
    serve(sys.argv[1], first="--first" in sys.argv, at=sys.argv[sys.argv.index("--at") + 1] if "--at" in sys.argv
          else None)
