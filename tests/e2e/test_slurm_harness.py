"""The throwaway Slurm cluster (tests/slurm_cluster.py) runs batch jobs, job steps and requeues.

These pin down the Slurm behaviour the launcher relies on, so a broken harness shows up here
rather than as a puzzling failure in a launcher test.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.slurm_cluster import FINAL_STATES


def _write_script(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(0o755)
    return path


def test_batch_job_runs_a_step_and_completes(slurm, tmp_path):
    script = _write_script(tmp_path / "hostname.sh", (
        "#!/bin/bash\n"
        "#SBATCH --nodes=1 --ntasks-per-node=1 --cpus-per-task=2 --time=5\n"
        "srun hostname > out.txt\n"
    ))
    job = slurm.submit(script, cwd=tmp_path)

    assert slurm.wait_job(job, timeout_s=60) == "COMPLETED", slurm.logs()
    assert (tmp_path / "out.txt").read_text().strip() == socket.gethostname().split(".")[0]
    # The job's output file lands in its working directory, the folder sbatch ran in.
    assert slurm.job(job)["StdOut"] == str(tmp_path / f"slurm-{job}.out")


def test_requeued_job_runs_again_with_its_restart_count(slurm, tmp_path):
    script = _write_script(tmp_path / "requeue.sh", (
        "#!/bin/bash\n"
        "#SBATCH --requeue --time=5\n"
        'echo "${SLURM_RESTART_COUNT:-0}" >> restarts.txt\n'
        "sleep 30\n"
    ))
    job = slurm.submit(script, cwd=tmp_path)
    restarts = tmp_path / "restarts.txt"
    try:
        slurm.wait_state(job, "RUNNING", timeout_s=30)
        _wait_for(lambda: restarts.exists() and restarts.read_text().split() == ["0"], timeout_s=10)

        started = time.monotonic()
        slurm.run("scontrol", "requeue", job)
        # Slurm holds a requeued job (Reason=BeginTime) for cred_expire + 1 s after it stops: ~6 s here.
        _wait_for(lambda: restarts.read_text().split() == ["0", "1"], timeout_s=40)
        assert time.monotonic() - started < 30
        assert slurm.job(job)["Restarts"] == "1"
        assert slurm.job_state(job) == "RUNNING"
    finally:
        slurm.run("scancel", job, check=False)
    assert slurm.wait_job(job, timeout_s=30) == "CANCELLED"


def test_requeue_sends_sigterm_to_the_batch_shell_then_sigkill_after_killwait(slurm, tmp_path):
    """A batch shell that traps TERM gets KillWait seconds to checkpoint before it is killed and rerun.

    Every process of the job gets the SIGTERM (hence `$EPOCHSECONDS`, not `date`, which would be
    killed mid-trap), and bash runs a trap only between commands: hence `sleep & wait`.
    """
    script = _write_script(tmp_path / "trap.sh", (
        "#!/bin/bash\n"
        "#SBATCH --requeue --time=5\n"
        "run=${SLURM_RESTART_COUNT:-0}\n"
        'trap \'echo "$run TERM $EPOCHSECONDS" >> signals.txt\' TERM\n'
        'while true; do echo "$run alive $EPOCHSECONDS" >> signals.txt; sleep 1 & wait $!; done\n'
    ))
    job = slurm.submit(script, cwd=tmp_path)
    signals = tmp_path / "signals.txt"

    def events(run: str) -> list[tuple[str, int]]:
        lines = [line.split() for line in signals.read_text().splitlines()] if signals.exists() else []
        return [(event, int(t)) for r, event, t in lines if r == run]

    try:
        slurm.wait_state(job, "RUNNING", timeout_s=30)
        _wait_for(lambda: events("0"), timeout_s=10)
        slurm.run("scontrol", "requeue", job)
        _wait_for(lambda: events("1"), timeout_s=slurm.kill_wait + slurm.cred_expire + 20)
    finally:
        slurm.run("scancel", job, check=False)  # the rerun traps TERM too: it ends KillWait seconds later

    first = events("0")
    term = [t for event, t in first if event == "TERM"]
    assert len(term) == 1, first
    last_alive = max(t for event, t in first if event == "alive")
    # Still running KillWait seconds after SIGTERM (1 s ticks, 1 s clock granularity), then killed.
    assert slurm.kill_wait - 2 <= last_alive - term[0] <= slurm.kill_wait + 1, first
    assert slurm.wait_job(job, timeout_s=30) in FINAL_STATES


def _wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met in {timeout_s} s")
        time.sleep(0.2)
