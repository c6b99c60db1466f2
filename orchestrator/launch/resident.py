"""The resident launcher: processes that `orchestrator cluster up` starts beside the warm cluster, which have
already imported torch, Ray, Ray Train, DeepSpeed, transformers and the orchestrator, and fork a copy of
themselves for each process handed to them: a command (`orchestrator train`, ...) or a Ray worker process of a
job on the warm cluster (launch/handover.py has both sides' clients).

Why fork servers: a command spends seconds importing Ray Train and torch before it asks for its workers,
and each Ray worker process as long again importing Ray, torch, DeepSpeed and transformers before it trains
(bench/RESULTS.md); Ray never keeps a process across jobs, so only processes that outlive jobs can have done
that work already. A copy becomes the process it replaces: it takes its standard streams (passed over the
socket), working directory, environment and arguments, then runs `orchestrator.cli.main` (a command) or
Ray's `default_worker.py` (a worker). Its exit status goes back to the waiting client, which relays its
signals to it. A job that fails or is killed ends only its copies: the launchers stay.

One launcher serves one environment: it imports with the environment it was started in, and a copy is the
process a fresh start makes only while nothing that the imports read differs (`environment_key`: the
Python, `sys.path`, the variables the preloaded libraries read as they import, `IMPORT_TIME_ENV`). A client
finds the launcher of its own environment by that key. Where none runs yet, the first launcher (the one
`cluster up` started, in the commands' environment) starts one for it, at most four in all
(launch/fork_server.py); that first process runs as without a launcher. A command joining the warm cluster
has the launcher of its ranks' environment (the cluster's, and what the job adds) started before they come,
and they wait for it. A launcher listens before it imports, so a client that comes meanwhile waits for it
rather than import the same itself. A launcher also refuses, and the
process runs as without it, when any source file it imported changed since it started (an edit, a `pip
install`); it then restarts itself, as soon as no copy of its own runs, with the new code.

Without `cluster up`, a command that starts its own cluster for CPU ranks starts a launcher for them too
(`start_for_job`), in the ranks' environment, as Ray starts: it imports while Ray and the worker processes
start, the ranks wait for it, and the one import serves both ranks instead of one each. It ends with the
command. A process that sees a GPU always starts fresh (CUDA is not fork-safe).

Launchers listen on abstract Unix sockets (no file, no path-length limit) named after the cache folder and
serve only their own user (the peer's credentials are checked). All of them and their copies share the
first launcher's session, which `orchestrator cluster down` ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.launch.warm import alive, cache_root

SERVED = ("train", "plan", "compress", "predict", "chat")
"""The commands handed to a launcher: those that import torch (`cluster`, `compare`, `submit` start fast)."""

IMPORT_TIME_ENV = ("PYTHON", "LD_", "HF_", "HUGGINGFACE", "TRANSFORMERS", "TORCH", "PYTORCH", "CUDA", "NCCL",
                   "OMP_", "MKL_", "KMP_", "DS_", "DEEPSPEED", "RAY_", "TOKENIZERS", "XDG_CACHE_HOME")
"""Prefixes of the environment variables that torch, Ray, DeepSpeed and transformers may read when imported
(OpenMP reads OMP_NUM_THREADS as torch loads it, huggingface_hub its HF_* settings)."""

PER_PROCESS_ENV = ("RAY_JOB_ID", "RAY_RAYLET_PID", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_OVERRIDE_NODE_ID_FOR_TESTING")
"""Set by Ray (or the job) per worker process and read only once Ray connects: not part of the key."""

NO_LAUNCHER_ENV = "ORCHESTRATOR_NO_LAUNCHER"
"""Set (to anything): commands, and the ranks of the jobs they start, run without launchers."""

JOB_LAUNCHER_ENV = "ORCHESTRATOR_JOB_LAUNCHER"
"""In a job's Ray workers: the name of the launcher of that job's own (`start_for_job`)."""

COMMAND_STARTED_ENV = "ORCHESTRATOR_COMMAND_STARTED"
"""Set in a command's copy: when the command's own process started (its start-up is counted from then)."""

START_TIMEOUT_S = 120


def environment_key(kind: str, executable: str, path: list[str], env: dict[str, str]) -> str:
    """What must be equal for a copy of a launcher to be the process a fresh start makes (path[0], the
    script's own folder, is set per copy). `kind`: "command" or "worker" (whose launchers import no Ray: no
    RAY_* variable matters to them)."""

    def read_on_import(name: str) -> bool:
        if not name.startswith(IMPORT_TIME_ENV):
            return False
        return not name.startswith("RAY_") if kind == "worker" else name not in PER_PROCESS_ENV

    blob = json.dumps([kind, os.path.realpath(executable), path[1:],
                       sorted((name, value) for name, value in env.items() if read_on_import(name))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def address(key: str) -> str:
    """The name of the launcher of an environment (abstract: `socket_name` adds the leading NUL)."""
    folder = hashlib.sha256(str(cache_root().resolve()).encode()).hexdigest()[:12]
    return f"orchestrator-launcher-{folder}-{key}"


def socket_name(name: str) -> str:
    return f"\0{name}"


def gpu_process(env: dict[str, str]) -> bool:
    """A process that sees a GPU: never a copy (CUDA cannot be used in a process forked from one that
    initialised it, and importing DeepSpeed probes the GPU)."""
    return bool(env.get("CUDA_VISIBLE_DEVICES", "").strip())


def start_for_job(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """A launcher for the ranks of one command's own cluster (`cluster=local` without `cluster up`), started in
    the ranks' environment `env` as the command starts its cluster: it imports meanwhile, and ranks that come
    sooner wait for it. It ends with the command (launch/local.py)."""
    import secrets

    name = f"orchestrator-launcher-job-{os.getpid()}-{secrets.token_hex(4)}"
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.launch.fork_server", "worker", "--at", name],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env)
    return process, name


def _record_path() -> Path:
    return cache_root() / "launcher.json"


def first_launcher_key() -> str | None:
    """The key of the launcher `cluster up` started, from its record (no liveness check: a client just tries)."""
    try:
        return json.loads(_record_path().read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def running() -> dict | None:
    """The first launcher's record ({pid, started, log, key}) if it runs and has finished its imports."""
    try:
        record = json.loads(_record_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if alive(record) else None


def start() -> tuple[dict, bool]:
    """Start the first launcher unless it runs; return once it serves. Returns (its record, whether this call
    started it)."""
    import psutil

    record = running()
    if record:
        return record, False
    log = cache_root() / "launcher.log"
    for earlier in cache_root().glob("launcher-*.log"):  # the other launchers' logs of an earlier `cluster up`
        earlier.unlink()
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.launch.fork_server", "command", "--first"],
                               stdin=subprocess.DEVNULL,
                               stdout=open(log, "w"), stderr=subprocess.STDOUT,
                               start_new_session=True)  # outlives this command; Ctrl-C here does not reach it
    started = psutil.Process(process.pid).create_time()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ((record := running()) and record["pid"] == process.pid and record["started"] == started):
        if process.poll() is not None or time.monotonic() > deadline:
            _end_session(process.pid)
            raise RuntimeError(f"the resident launcher did not start within {START_TIMEOUT_S}s:\n"
                               f"{log.read_text()[-1500:]}")
        time.sleep(0.1)
    return record, True


def stop() -> dict | None:
    """End every launcher and every copy they run. Returns the first launcher's record, or None if none ran."""
    record = running()
    _record_path().unlink(missing_ok=True)
    if record:
        _end_session(record["pid"])
    return record


def _end_session(session: int) -> None:
    """SIGTERM every process of the launchers' session, SIGKILL what remains after 10 s."""
    import psutil

    def member(process: psutil.Process) -> bool:
        try:
            return os.getsid(process.pid) == session
        except OSError:
            return False

    members = [process for process in psutil.process_iter() if member(process)]
    for process in members:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(members, timeout=10)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def write_record(key: str) -> None:
    import psutil

    me = psutil.Process()
    record = {"pid": me.pid, "started": me.create_time(), "log": str(cache_root() / "launcher.log"), "key": key}
    temporary = _record_path().with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    temporary.replace(_record_path())



MAX_MESSAGE = 8 << 20


def send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    """One length-prefixed JSON message, with descriptors riding on its first byte."""
    data = json.dumps(message).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        sent = socket.send_fds(conn, [frame], fds)
        conn.sendall(frame[sent:])
    else:
        conn.sendall(frame)


def receive(conn: socket.socket, max_fds: int = 3) -> tuple[dict, list[int]]:
    """One length-prefixed JSON message and the descriptors that came with it."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, max_fds)
    if not data:
        raise ValueError("connection closed")
    data += _exactly(conn, max(0, 4 - len(data)))
    size = struct.unpack("!I", data[:4])[0]
    if size > MAX_MESSAGE:
        raise ValueError("message too large")
    body = data[4:]
    return json.loads(body + _exactly(conn, size - len(body))), fds


def _exactly(conn: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = conn.recv(min(size, 65536))
        if not chunk:
            raise ValueError("connection closed mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
