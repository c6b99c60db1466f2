"""`orchestrator cluster up`'s resident launchers (launch/resident.py): commands and the warm cluster's Ray workers
run in copies of processes that imported torch, Ray Train, DeepSpeed and transformers already; the launchers
outlive failing, killed and interrupted jobs, never run code older than the installed files, and
`cluster down` ends them all.

The cluster and launchers of this module run from a copy of the source on PYTHONPATH (so a test can edit an
installed file) with a cache folder of their own (the session's other commands must not find them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers import TINY, summary, wait_for_step

ROOT = Path(__file__).resolve().parents[2]
SERVED_LINE = "(the resident launcher runs this command"


@dataclass
class Warm:
    env: dict
    source: Path
    cache: Path
    folder: Path

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                              env=self.env, cwd=self.folder, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env, cwd=self.folder)

    def session(self) -> int:
        """The first launcher's: every launcher and copy runs in it."""
        return json.loads((self.cache / "launcher.json").read_text())["pid"]

    def processes(self, named: str) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if _session(p.pid) == self.session()
                and named in " ".join(p.info["cmdline"] or [])]

    def launchers(self) -> list[psutil.Process]:
        return self.processes("orchestrator.launch.fork_server")

    def job(self, run_dir: Path, *extra: str) -> list[str]:
        return ["train", *TINY, f"data.cache_dir={self.env['DATA_CACHE']}", "logger.mode=disabled",
                f"run_dir={run_dir}", *extra]


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def warm(tmp_path_factory, data_cache):
    folder = tmp_path_factory.mktemp("resident")
    source = folder / "src"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "orchestrator", source / "orchestrator", ignore=ignore)
    shutil.copytree(ROOT / "conf", source / "conf", ignore=ignore)
    env = {**os.environ, "PYTHONPATH": str(source), "ORCHESTRATOR_CACHE": str(folder / "cache"),
           "DATA_CACHE": data_cache, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    warm = Warm(env, source, folder / "cache", folder)
    up = warm.run("cluster", "up", timeout=180)
    assert up.returncode == 0 and "started resident launcher" in up.stdout, up.stdout + up.stderr
    yield warm
    warm.run("cluster", "down", timeout=120)


def test_a_command_and_its_ray_workers_run_in_copies_of_launchers_that_imported_already(warm):
    assert oct(os.stat(warm.cache / "local-cluster.json").st_mode & 0o777) == "0o600"  # holds the cluster's token
    first = warm.run(*warm.job(warm.folder / "first", "train.max_steps=2"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert SERVED_LINE in first.stderr and "joined the warm local Ray cluster" in first.stdout
    # Joining, the command had the launcher of its ranks' environment started before they came, and they waited
    # for it: their imports were done (about 3 s without).
    assert summary(warm.folder / "first")["startup"]["imports_s"] < 1.0
    assert len(warm.launchers()) == 2  # the commands' and the ranks'
    second = warm.run(*warm.job(warm.folder / "second", "train.max_steps=2"))
    assert second.returncode == 0 and SERVED_LINE in second.stderr, second.stderr[-3000:]
    assert summary(warm.folder / "second")["startup"]["imports_s"] < 1.0
    assert len(warm.launchers()) == 2  # the same two serve every later job


def test_the_launchers_outlive_a_failing_job_a_killed_worker_and_ctrl_c(warm):
    launchers = {p.pid for p in warm.launchers()}
    # A rank's copy SIGKILLed with no restart allowed: the job fails, in one line.
    failing = warm.start(*warm.job(warm.folder / "failing", "train.max_steps=300", "train.max_failures=0"))
    wait_for_step(warm.folder / "failing", 2, failing)
    ranks = warm.processes("ray::RayTrainWorker")
    assert len(ranks) == 2  # the ranks are copies of a launcher
    ranks[0].send_signal(signal.SIGKILL)
    output, _ = failing.communicate(timeout=300)
    assert failing.returncode == 1 and "error: training failed" in output, output[-3000:]
    # Ctrl-C of the command: relayed to its copy, which checkpoints and stops as a command does.
    interrupted = warm.start(*warm.job(warm.folder / "interrupted", "train.max_steps=300"))
    wait_for_step(warm.folder / "interrupted", 2, interrupted)
    interrupted.send_signal(signal.SIGINT)
    output, _ = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 75 and "SIGINT received" in output, output[-3000:]
    assert {p.pid for p in warm.launchers()} == launchers and all(psutil.Process(pid).is_running()
                                                                  for pid in launchers)
    after = warm.run(*warm.job(warm.folder / "after", "train.max_steps=2"))
    assert after.returncode == 0 and SERVED_LINE in after.stderr, after.stderr[-3000:]
    assert summary(warm.folder / "after")["startup"]["imports_s"] < 1.0


def test_after_an_installed_file_changes_no_command_runs_the_old_code(warm):
    plan = warm.run("plan", *TINY)
    assert plan.returncode == 0 and SERVED_LINE in plan.stderr, plan.stderr
    edited = warm.source / "orchestrator" / "plan" / "command.py"  # the launcher imported it
    edited.write_text(edited.read_text() + "\n\n_run = run\n\n\ndef run(*args, **kwargs):\n"
                      "    print('the edited plan command')\n    return _run(*args, **kwargs)\n")
    stale = warm.run("plan", *TINY)
    assert stale.returncode == 0 and "the edited plan command" in stale.stdout, stale.stdout + stale.stderr
    assert SERVED_LINE not in stale.stderr and "plan/command.py changed since the resident launcher started" in \
        stale.stderr
    deadline = time.monotonic() + 120  # the launcher restarts with the new code, and serves again
    while SERVED_LINE not in (again := warm.run("plan", *TINY)).stderr and time.monotonic() < deadline:
        time.sleep(1)
    assert SERVED_LINE in again.stderr and "the edited plan command" in again.stdout, again.stderr


def test_cluster_down_ends_every_launcher_and_copy(warm):
    first = json.loads((warm.cache / "launcher.json").read_text())["pid"]
    cluster = json.loads((warm.cache / "local-cluster.json").read_text())["pid"]
    down = warm.run("cluster", "down", timeout=120)
    assert down.returncode == 0 and "stopped the resident launcher" in down.stdout, down.stdout + down.stderr
    left = [p for p in psutil.process_iter() if _session(p.pid) in (first, cluster)
            and p.status() != psutil.STATUS_ZOMBIE]
    assert left == []
    assert "no resident launcher runs" in warm.run("cluster", "status").stdout
