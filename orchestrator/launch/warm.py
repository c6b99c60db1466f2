"""`orchestrator cluster up|down|status`: a local Ray cluster kept warm between commands.

`cluster=local` normally starts an embedded Ray cluster inside each command and stops it at the
end: a few seconds of every start-up (bench/RESULTS.md). `orchestrator cluster up` starts the same
kind of cluster once, as `ray start --head --block` in a session of its own on 127.0.0.1, and
records it in <cache>/local-cluster.json; every later `cluster=local` command on this machine joins
it instead (launch/local.py) until `orchestrator cluster down` ends it. Quick iterations and sweeps
then skip the cluster start. A record whose cluster is gone (a reboot, a kill) is ignored and removed.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.machine import free_port

START_TIMEOUT_S = 60


def cache_root() -> Path:
    """The same folder the data cache defaults to (data.cache_dir)."""
    return Path(os.environ.get("ORCHESTRATOR_CACHE") or Path.home() / ".cache" / "orchestrator")


def _record_path() -> Path:
    return cache_root() / "local-cluster.json"


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


def alive(record: dict) -> bool:
    """The process a record names ({pid, started}) still runs: the same process, not a reused pid."""
    import psutil

    try:
        process = psutil.Process(record["pid"])
        return abs(process.create_time() - record["started"]) < 1 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError):
        return False


def running() -> dict | None:
    """The warm cluster's record ({address, pid, started, num_cpus, log}) if it is up, else None."""
    path = _record_path()
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if alive(record) and _answers(record["address"]):
        return record
    path.unlink(missing_ok=True)  # its cluster is gone
    return None


def up(num_cpus: int) -> tuple[dict, bool]:
    """Start the warm cluster unless it runs. Returns (its record, whether this call started it)."""
    from orchestrator.launch import local

    record = running()
    if record:
        return record, False
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), root / "local-cluster.log"
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
               # Ray's defaults otherwise (dashboard on loopback included): sweeps may join it too
               "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               "--disable-usage-stats", f"--system-config={json.dumps(local.system_config(lean=True))}"]
    token = secrets.token_hex(16)  # Ray's token authentication: only who can read the record may join
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, **auth_env(token)},
                               start_new_session=True)  # outlives this command; Ctrl-C here does not reach it
    import psutil

    record = {"address": f"127.0.0.1:{port}", "pid": process.pid, "started": psutil.Process(process.pid).create_time(),
              "num_cpus": num_cpus, "log": str(log), "token": token}
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(record["address"]):
        if process.poll() is not None or time.monotonic() > deadline:
            _end(process.pid)
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise RuntimeError(f"the local Ray cluster did not start within {START_TIMEOUT_S}s:\n{tail}")
        time.sleep(0.2)
    path = _record_path()
    path.touch(mode=0o600)
    path.write_text(json.dumps(record))
    return record, True


def auth_env(token: str) -> dict[str, str]:
    """What a process needs in its environment to join the warm cluster."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def use_token(token: str) -> None:
    """Authenticate this process (and the processes it starts) to the warm cluster.

    Ray reads RAY_AUTH_MODE once, when it loads its config, and only turns token mode on by itself for a
    cluster it finds without an address; so we set the token and reload as Ray's own
    `_enable_token_auth` does (Ray 2.60, private).
    """
    from ray._private.authentication.authentication_token_setup import (
        AuthenticationTokenLoader,
        _enable_token_auth,
    )

    os.environ.update(auth_env(token))
    _enable_token_auth()
    AuthenticationTokenLoader.instance().reset_cache()


def down() -> dict | None:
    """End the warm cluster (every process of its session). Returns its record, or None if none ran."""
    record = running()
    _record_path().unlink(missing_ok=True)
    if record:
        _end(record["pid"])
    return record


def _end(pid: int) -> None:
    """SIGTERM `ray start --block` (it stops its node), then SIGKILL whatever its process group still holds."""
    import psutil

    try:
        process = psutil.Process(pid)
        process.terminate()
        process.wait(timeout=10)
    except psutil.TimeoutExpired:
        pass
    except psutil.NoSuchProcess:
        return
    try:
        os.killpg(pid, signal.SIGKILL)  # start_new_session: its process group id is its pid
    except ProcessLookupError:
        pass
