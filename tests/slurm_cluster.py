"""A real, throwaway single-node Slurm cluster for tests.

One munged, one slurmctld and one slurmd, all run as root in the foreground from a private
folder (key, sockets, state, spool, logs), on free loopback ports, so nothing on the machine's
own Slurm or MUNGE setup is read or touched. Clients (sbatch, squeue, scontrol, ...) find this
cluster only through SLURM_CONF: always pass ``cluster.env()`` to them.

Needs Debian's slurm-wlm and munge (tests/install-system-deps.sh) and root. Without them the
tests skip, except under CI=true where a skip would hide a broken runner: there they fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REQUIRED = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
# Job states after which a job never runs again (a requeued job goes back to PENDING instead).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
)


def _missing_prerequisites() -> list[str]:
    from shutil import which

    missing = [f"`{cmd}` not on PATH" for cmd in REQUIRED if which(cmd) is None]
    if os.geteuid() != 0:
        missing.append("not running as root (the daemons run as root, SlurmUser=root)")
    return missing


def require_slurm() -> None:
    """Skip the calling test when Slurm can't run here; fail instead under CI=true."""
    missing = _missing_prerequisites()
    if not missing:
        return
    message = "Slurm test cluster unavailable: " + "; ".join(missing) + " (run tests/install-system-deps.sh as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    """A port nothing listens on now: the OS picks it, we release it for the daemon to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """A bit under the machine's memory: slurmd drains a node that reports less than configured."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(int(line.split()[1]) / 1024 * 0.9)
    return 1024


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    """Start with ``with SlurmCluster(tmp_dir) as cluster:`` or ``start()``/``stop()``.

    ``cpus`` is what the node advertises (it need not match the machine: slurmd is told to trust
    the config). ``kill_wait`` is Slurm's KillWait: the seconds between SIGTERM and SIGKILL when a
    job is cancelled, requeued or hits its time limit. ``cred_expire`` (5 at least: Slurm ignores
    smaller values and uses 120) is also how long Slurm holds a requeued job (Reason=BeginTime)
    once its old processes are gone: a requeued job runs again at most kill_wait + cred_expire + 2
    seconds after ``scontrol requeue`` (6 s for a job that dies on SIGTERM, with the defaults).
    """

    def __init__(self, root: str | os.PathLike, cpus: int = 2, kill_wait: int = 5, cred_expire: int = 5):
        self.root = Path(root).resolve()
        if len(str(self.root)) > 60:
            # Unix socket paths (munge's, slurmstepd's in the spool) are limited to 108 bytes.
            raise ValueError(f"Slurm test cluster folder path too long for its sockets: {self.root}")
        if cred_expire < 5:
            raise ValueError("cred_expire below 5 is ignored by Slurm (it falls back to 120 s)")
        self.cpus = cpus
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.sock"
        self._procs: dict[str, subprocess.Popen] = {}

    # ---- set-up -----------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, **extra: str) -> dict[str, str]:
        """The environment every Slurm client must run with: it is what points them at this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        # An outer Slurm job's variables would leak into sbatch/srun here and confuse them.
        for key in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            del env[key]
        env.update(extra)
        return env

    def start(self) -> SlurmCluster:
        require_slurm()
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._write_munge_key()
        for attempt in range(3):
            self._write_conf()  # fresh ports each time
            try:
                self._start_munged()
                self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
                self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
                self._wait_idle(timeout_s=60)
                return self
            except BaseException:
                self.stop()
                if attempt == 2 or not self._port_was_taken():
                    raise
        raise AssertionError("unreachable")

    def _port_was_taken(self) -> bool:
        """A port _free_port() released was bound by another process (the other pytest process's Ray, say)
        before our daemon bound it."""
        return any("Address already in use" in log.read_text(errors="replace")
                   for log in (self.root / "log").glob("*.log"))

    def _write_munge_key(self) -> None:
        key = self.root / "munge" / "munge.key"
        # munged insists on a key file readable by its own user only.
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

    def _write_conf(self) -> None:
        r = self.root
        settings = {
            "ClusterName": "orchtest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": _free_port(),
            "SlurmdPort": _free_port(),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            # Our own munged, not the machine's; cred_expire also delays restarts of requeued jobs.
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket},cred_expire={self.cred_expire}",
            "StateSaveLocation": r / "state",
            "SlurmdSpoolDir": r / "spool",
            "SlurmctldPidFile": r / "run" / "slurmctld.pid",
            "SlurmdPidFile": r / "run" / "slurmd.pid",
            "SlurmctldLogFile": r / "log" / "slurmctld.log",
            "SlurmdLogFile": r / "log" / "slurmd.log",
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            # No cgroups: they need a writable cgroup tree, which containers and sandboxes often lack.
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "SwitchType": "switch/none",
            "MpiDefault": "none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "SchedulerType": "sched/backfill",
            # Scheduling passes every second instead of every 30/60 s: a requeued job waits for a
            # periodic pass once its BeginTime passes (no event wakes the scheduler then).
            "SchedulerParameters": "bf_interval=1,sched_interval=1",
            # Trust the configured CPUs/memory: a node that detects fewer would be drained.
            "SlurmdParameters": "config_overrides",
            "ReturnToService": 2,
            "MailProg": "/bin/true",
            "JobRequeue": 1,
            # Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or times out.
            "KillWait": self.kill_wait,
            # Finished jobs stay visible to `scontrol show job` (there is no slurmdbd for sacct).
            "MinJobAge": 300,
            "InactiveLimit": 0,
            "Waittime": 0,
            "SlurmdTimeout": 300,
            "SlurmctldTimeout": 300,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines.append(
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_real_memory_mb()} State=UNKNOWN"
        )
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Run a daemon in the foreground of its own session, its stderr in log/<name>.out."""
        out = open(self.root / "log" / f"{name}.out", "ab")  # the child keeps its own copy open
        try:
            self._procs[name] = subprocess.Popen(
                argv, env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.root,
            )
        finally:
            out.close()

    def _start_munged(self) -> None:
        m = self.root / "munge"
        # --force: munged otherwise refuses a socket folder that only root can reach (ours is 0700
        # under pytest's temp dir), which is fine here because every client runs as root.
        self._spawn("munged", [
            "munged", "--foreground", "--force",
            f"--key-file={m / 'munge.key'}", f"--socket={self.munge_socket}",
            f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}", f"--log-file={m / 'munged.log'}",
        ])
        deadline = time.monotonic() + 15
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not create its socket in 15 s\n{self.logs()}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while starting\n{self.logs()}")

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            res = self.run("sinfo", "-h", "-o", "%T", check=False)
            state = res.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node not idle after {timeout_s:.0f} s (sinfo says {state!r})\n{self.logs()}")

    def logs(self, lines: int = 30) -> str:
        """The tails of every daemon's log, for error messages.

        A daemon's <name>.out (its stderr) repeats its <name>.log, but also holds what it said
        before it could open the log (a bad slurm.conf, say): shown when there is no log.
        """
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            log = self.root / "log" / f"{name}.log"
            if not log.exists() or log.stat().st_size == 0:
                log = log.with_suffix(".out")
            parts.append(f"--- {log} ---\n{_tail(log, lines)}")
        return "\n".join(parts)

    # ---- clients ----------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 30, cwd=None) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster; output captured as text."""
        res = subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def submit(self, script: str | os.PathLike, *args: str, cwd: str | os.PathLike | None = None) -> str:
        """sbatch the script (extra sbatch options in args) and return the job id.

        The job's working directory, hence where slurm-<id>.out lands, is ``cwd`` (default: ours).
        """
        res = self.run("sbatch", "--parsable", *args, str(script), cwd=cwd)
        return res.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, RestartCnt, BatchHost, StdOut, ...); {} once purged."""
        res = self.run("scontrol", "show", "job", "--oneliner", str(job_id), check=False)
        if res.returncode != 0:
            return {}
        info = {}
        for field in res.stdout.split():
            key, sep, value = field.partition("=")
            if sep and key not in info:
                info[key] = value
        return info

    def job_state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "")

    def wait_state(self, job_id: str, states, timeout_s: float) -> str:
        """Poll until the job is in one of ``states`` and return it; TimeoutError otherwise."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.25)
        raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout_s:.0f} s (last {state!r})")

    def wait_job(self, job_id: str, timeout_s: float = 60) -> str:
        """Wait for the job to finish for good and return its final state (COMPLETED, FAILED, ...)."""
        return self.wait_state(job_id, FINAL_STATES, timeout_s)

    # ---- tear-down --------------------------------------------------------------------------

    def stop(self, timeout_s: float = 15) -> None:
        """Cancel every job, then stop our daemons by pid, then whatever still runs with our SLURM_CONF.

        Only processes this cluster started are signalled: never anything matched by name alone.
        """
        ours = _pids_with_env(self._marker())  # now: a process that has exited no longer shows its environment
        if self._running("slurmctld") and self._running("slurmd"):
            try:
                self._cancel_all(timeout_s=self.kill_wait + 10)
            except (subprocess.TimeoutExpired, RuntimeError):
                pass  # whatever is left is killed below
        ours += _pids_with_env(self._marker())
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.get(name)
            if proc is not None:
                _terminate(proc, timeout_s)
        self._kill_leftovers()
        self._procs.clear()
        # Orphaned slurmstepds are reaped by init, a moment later: wait so none outlives us.
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{pid}") for pid in ours) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _marker(self) -> bytes:
        return f"SLURM_CONF={self.conf}".encode()

    def _running(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _cancel_all(self, timeout_s: float) -> None:
        """scancel every job (all its processes, batch shell included) and wait for the queue to empty."""
        self.run("scancel", "--full", "--quiet", "--partition=debug", check=False, timeout=10)
        deadline = time.monotonic() + timeout_s
        while self.run("squeue", "-h", "-o", "%i", timeout=10).stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.25)

    def _kill_leftovers(self) -> None:
        """slurmstepd and job processes outlive slurmd; they carry SLURM_CONF=<ours> in their environment."""
        for _ in range(2):
            pids = _pids_with_env(self._marker())
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)


def _terminate(proc: subprocess.Popen, timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _pids_with_env(marker: bytes) -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found
