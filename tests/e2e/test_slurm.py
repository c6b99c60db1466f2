"""cluster=slurm on a real (throwaway, single-node) Slurm cluster: `orchestrator submit` renders and
sbatches the script, the job brings up Ray inside the allocation and trains; a preemption notice
(USR1 to the batch shell, as `--signal=B:USR1@s` sends it) checkpoints, requeues and resumes. A job
the cluster can never run is refused: by `sbatch --test-only` before anything is written, or,
when it pends for a reason waiting cannot fix, cancelled right after submission.

Last, the harness itself (tests/slurm_cluster.py): batch jobs, job steps and requeues behave as the
launcher relies on, so a broken harness shows up there rather than as a puzzling launcher failure. One
module, so one test process holds the session's Slurm cluster (its daemons listen on fixed ports).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, metrics, orchestrator
from tests.slurm_cluster import FINAL_STATES, SlurmCluster

pytestmark = pytest.mark.slow


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (Ray's GCS, dashboard, client server)."""
    for first in range(23000, 40000, 7):
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError("no free ports")


def _orchestrator_submit(slurm: SlurmCluster, *overrides: str) -> subprocess.CompletedProcess:
    return orchestrator("submit", "cluster=slurm", *overrides, env=slurm.env(), timeout=120)


def _submit(slurm: SlurmCluster, run_dir: Path, *overrides: str) -> str:
    result = _orchestrator_submit(
        slurm, "cluster.nodes=1", "cluster.gpus_per_node=0", "cluster.workers_per_node=2", "cluster.cpus_per_worker=1",
        "cluster.gpu_memory_gb=null", "cluster.slurm.time=15", f"cluster.slurm.ray_port={_free_ports(3)}", *TINY,
        f"run_dir={run_dir}", *overrides)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("submitted Slurm job"))
    return line.split()[3].rstrip(";")


def test_a_job_trains_in_its_allocation_and_a_preemption_notice_checkpoints_requeues_and_resumes(slurm, tmp_path):
    """One submitted job: the Ray cluster inside the allocation trains it on 2 workers; Slurm's preemption notice
    makes it checkpoint and requeue; the requeued job resumes and finishes, every step logged once."""
    run_dir, steps = tmp_path / "run", 120
    job = _submit(slurm, run_dir, f"train.max_steps={steps}", "train.eval_every=30", "train.ckpt_every=0")
    deadline = time.monotonic() + 300
    while len(metrics(run_dir)) < 5:
        assert time.monotonic() < deadline and slurm.job_state(job) in ("PENDING", "RUNNING"), \
            (run_dir / f"slurm-{job}.out").read_text()[-4000:] if (run_dir / f"slurm-{job}.out").exists() else job
        time.sleep(0.5)
    # What Slurm sends preempt_signal_s before the time limit (#SBATCH --signal=B:USR1@s).
    slurm.run("scancel", "--batch", "--signal=USR1", job)

    state = slurm.wait_job(job, timeout_s=400)
    output = (run_dir / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", output[-4000:]
    assert "Ray cluster: 1 node(s)" in output
    assert slurm.job(job)["Restarts"] == "1"
    assert "requeueing job" in output
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    preempted = next(e for e in events if e["event"] == "preempted")
    assert 5 <= preempted["step"] < steps
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == preempted["step"] and summary["steps"] == steps
    assert summary["world_size"] == 2
    assert [row["step"] for row in metrics(run_dir)] == list(range(1, steps + 1))  # nothing lost, nothing repeated
    val = [row["val_loss"] for row in metrics(run_dir) if "val_loss" in row]
    assert len(val) == 4 and val[0] > val[1] > val[2] > val[3]


def _job_ids(slurm: SlurmCluster) -> set[str]:
    """Every job the controller knows, finished ones included (MinJobAge keeps them 300 s)."""
    return set(slurm.run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split())


def test_a_job_no_node_can_run_is_refused_before_anything_is_written_or_queued(slurm, tmp_path):
    # The case: 2 workers x the Slurm group's 8 CPUs each on a node with 2 CPUs.
    run_dir = tmp_path / "run"
    before = _job_ids(slurm)
    started = time.monotonic()
    result = _orchestrator_submit(slurm, "cluster.gpus_per_node=0", "cluster.workers_per_node=2", f"run_dir={run_dir}")
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: cluster.nodes=1 cluster.workers_per_node=2 cluster.cpus_per_worker=8 ") and \
        "sbatch --test-only refused the job (1 node(s) x 16 CPUs, 0 GPUs each): Requested node configuration is " \
        "not available" in line
    assert not run_dir.exists()
    assert _job_ids(slurm) == before  # nothing was queued


def test_a_job_pending_for_a_reason_that_cannot_resolve_is_cancelled(slurm, tmp_path):
    # --test-only accepts a time limit over the partition's (EnforcePartLimits=NO, Slurm's default);
    # the queued job then pends for PartitionConfig / PartitionTimeLimit forever.
    slurm.run("scontrol", "create", "PartitionName=short", "Nodes=ALL", "MaxTime=1", "State=UP")
    try:
        run_dir = tmp_path / "run"
        before = _job_ids(slurm)
        result = _orchestrator_submit(
            slurm, "cluster.gpus_per_node=0", "cluster.workers_per_node=2", "cluster.cpus_per_worker=1",
            "cluster.slurm.partition=short", "cluster.slurm.time=15", "cluster.join_timeout_s=30", f"run_dir={run_dir}")
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.splitlines()
        (job,) = _job_ids(slurm) - before
        assert f"cluster.slurm.time=15 cluster.slurm.partition=short: Slurm job {job} pends for Partition" in line
        assert "which waiting cannot fix, so it was cancelled" in line
        assert slurm.wait_job(job, timeout_s=30) == "CANCELLED"
        assert not run_dir.exists()
    finally:
        slurm.run("scontrol", "delete", "PartitionName=short")


def test_a_submitted_sweep_runs_its_trials_inside_the_allocation(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "submit", "cluster=slurm", "cluster.nodes=1", "cluster.gpus_per_node=0",
         "cluster.workers_per_node=1", "cluster.cpus_per_worker=2", "cluster.slurm.time=15",  # trials one at a time
         f"cluster.slurm.ray_port={_free_ports(3)}", *TINY, "data.max_bytes=20000", "optim.lr=1e-3,3e-3",
         "train.max_steps=10", "train.eval_every=5", f"sweep.dir={sweep_dir}"],
        env=slurm.env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    job = next(line for line in result.stdout.splitlines() if line.startswith("submitted Slurm job")).split()[3]
    state = slurm.wait_job(job, timeout_s=400)
    output = (sweep_dir / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", output[-4000:]
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert [t["status"] for t in record["trials"]] == ["completed", "completed"]
    assert "completed at step 10" in output  # the sweep's own lines, in the job's output


# --- the harness ---


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
