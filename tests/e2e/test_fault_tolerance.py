"""A resumed run is indistinguishable from one that never stopped.

Real faults against the real CLI: a worker SIGKILLed mid-run, SIGTERM to the driver, a stuck
rank, truncated and unmarked checkpoints, secrets in the environment. Every run is the session's
reference job (tests/helpers.py REFERENCE_JOB: 2 workers, fp32, fixed seed, checkpoints every 5
steps) so each can be compared step by step with the session's uninterrupted reference run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import (
    REFERENCE_JOB,
    REFERENCE_STEPS,
    SECRETS,
    assert_same_losses,
    events,
    job_processes,
    metrics,
    orchestrator,
    sigkill_a_worker_and_finish,
    summary,
    survivors,
    train_workers,
    wait_for_step,
)
from tests.helpers import command as cli
from tests.wandb_reader import run_ids

pytestmark = pytest.mark.slow

STEPS = REFERENCE_STEPS
JOB = REFERENCE_JOB


def command(run_dir: Path, *extra: str) -> list[str]:
    return cli("train", *JOB, f"run_dir={run_dir}", *extra)


def run(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A run of the reference job to its end; W&B is not under test here (the SIGKILL test checks it)."""
    return orchestrator("train", *JOB, f"run_dir={run_dir}", "logger.mode=disabled", *extra, env=env, timeout=600)


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


def assert_same_trajectory(run_dir: Path, reference: Path) -> None:
    assert_same_losses(run_dir, reference, STEPS)


def test_sigkill_of_a_worker_restarts_once_and_resumes_exactly(spawn, reference, tmp_path):
    run_dir = tmp_path / "killed"
    process = spawn(command(run_dir, "train.max_failures=1"), stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
    sigkill_a_worker_and_finish(run_dir, process, 15)
    assert_same_trajectory(run_dir, reference.run_dir)
    # Each attempt writes its own offline-run-<time>-<id> folder; all must carry the same run id
    # (a killed attempt may not have flushed its run record, so the folder name is the witness).
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    ids = {f.parent.name.rsplit("-", 1)[1] for f in files} | {i for f in files for i in run_ids(f)}
    assert ids == {json.loads((run_dir / "run.json").read_text())["run_id"]}


def _stopped(run_dir: Path, process: subprocess.Popen) -> int:
    """The run exited 75 with every rank's shard of a sealed checkpoint, the newest: the step it stopped at."""
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 75, output[-3000:]
    stopped = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert stopped["event"] == "preempted" and stopped["step"] < STEPS
    checkpoint = run_dir / "checkpoints" / f"step_{stopped['step']:08d}"
    assert (checkpoint / "COMPLETE").is_file() and len(list(checkpoint.glob("rank_*.pt"))) == 2
    assert (run_dir / "checkpoints" / "latest").read_text() == checkpoint.name
    return stopped["step"]


@pytest.mark.alone  # its bound holds on a machine not shared with another run
def test_stop_signals_to_the_workers_or_the_driver_checkpoint_exit_75_and_the_reruns_match(spawn, reference, tmp_path):
    """A scheduler's notices: SIGUSR1 to one worker and SIGTERM to the other (each reaches the same handler), then,
    in the rerun, SIGTERM to the driver. Each time every rank checkpoints the same step and the command exits 75;
    the last rerun finishes with the uninterrupted run's losses and weights."""
    run_dir = tmp_path / "preempted"
    stoppable = command(run_dir, "logger.mode=disabled")  # W&B: not under test here
    process = spawn(stoppable, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 5, process)
    first, second = train_workers(process)
    first.send_signal(signal.SIGUSR1)
    second.send_signal(signal.SIGTERM)
    at = _stopped(run_dir, process)
    assert at >= 5

    process = spawn(stoppable, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # the same command
    wait_for_step(run_dir, at + 5, process)
    process.send_signal(signal.SIGTERM)
    assert _stopped(run_dir, process) >= at + 5

    result = run(run_dir)  # and once more, to the end
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_trajectory(run_dir, reference.run_dir)
    ours, theirs = weights(run_dir), weights(reference.run_dir)
    for name, tensor in ours.items():
        assert (tensor - theirs[name]).abs().max().item() <= 1e-6, name

    # The plan calibrated from the reference run predicts this one (another process, another day for the
    # machine): its steady step within 35% (runs of one job differ by up to ~10% here) and its checkpoint.
    planned = orchestrator("plan", "--config", str(reference.run_dir / "config.yaml"), "--calibrate",
                           str(reference.run_dir), "plan.format=json", timeout=60)
    assert planned.returncode == 0, planned.stderr
    scale, measured = json.loads(planned.stdout)["plan"]["scale"], summary(run_dir)
    assert scale["step_time_s"] == pytest.approx(measured["step_time_s"], rel=0.35)
    assert scale["checkpoint_bytes_total"] == pytest.approx(measured["checkpoint_bytes"], rel=0.05)


def test_damaged_newest_checkpoints_are_skipped_each_with_its_reason(reference, tmp_path):
    """Three kinds of damage on the three newest checkpoints of one copy: a truncated shard (step 30), a flipped
    byte of the same size that only the manifest's sha256 can tell (step 25), a missing marker, what a writer
    killed between the shards and the marker leaves (step 20). One resume skips all three and continues from 15."""
    run_dir = tmp_path / "damaged"
    shutil.copytree(reference.run_dir, run_dir)
    (run_dir / "summary.json").unlink()
    checkpoint = {step: run_dir / "checkpoints" / f"step_{step:08d}" for step in (15, 20, 25, 30)}
    shard = checkpoint[30] / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    shard = checkpoint[25] / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    (checkpoint[20] / "COMPLETE").unlink()
    result = run(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for step in (30, 25, 20):
        assert f"skipping checkpoint {checkpoint[step]}" in out, step
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its sha256" in out
    assert f"resuming from {checkpoint[15]}" in out
    assert_same_trajectory(run_dir, reference.run_dir)


def test_checkpoints_exist_but_none_usable_is_an_error_with_the_paths(reference, tmp_path):
    run_dir = tmp_path / "ruined"
    shutil.copytree(reference.run_dir, run_dir)
    for marker in (run_dir / "checkpoints").glob("*/COMPLETE"):
        marker.unlink()
    result = run(run_dir)
    assert result.returncode == 2
    assert "has checkpoints but none is usable" in result.stderr and "step_00000030" in result.stderr


def test_rerunning_a_finished_run_says_so_and_changes_nothing(reference, tmp_path):
    run_dir = tmp_path / "again"
    shutil.copytree(reference.run_dir, run_dir)
    result = run(run_dir)
    assert result.returncode == 0
    assert "already finished at step 30" in result.stdout
    assert metrics(run_dir) == metrics(reference.run_dir)


def in_a_checkpoint_save(run_dir: Path) -> bool:
    """A checkpoint folder exists that is not sealed yet: the ranks are writing it now."""
    return any(not (path / "COMPLETE").exists() for path in (run_dir / "checkpoints").glob("step_*"))


TIMEOUT_S = 10
STUCK = {  # a rank stuck in a step (ZeRO-3's parameter gathers), and one stuck writing its ZeRO-2 shard
    "zero3-in-a-step": (["zero=3"], lambda run_dir: True),
    "zero2-in-a-checkpoint-save": (["train.ckpt_every=1", "model.hidden_size=256", "model.num_layers=4"],
                                   in_a_checkpoint_save),
}


def test_sigterm_while_ray_starts_ends_at_once_leaving_no_process_and_the_rerun_completes(spawn, tmp_path):
    """Before the first step there is nothing to checkpoint: the command ends (exit 75, a scheduler's requeue)
    with every process it started, half-started Ray included; the same command then runs to its end."""
    run_dir = tmp_path / "early"
    args = command(run_dir, "train.max_steps=3", "logger.mode=disabled")
    driver = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[int, psutil.Process] = {}
    names: set[str] = set()
    deadline = time.monotonic() + 120
    while not names & {"gcs_server", "raylet"}:  # Ray is starting
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0][-3000:]
        for child in job_processes(driver):
            seen.setdefault(child.pid, child)
            with contextlib.suppress(psutil.Error):
                names.add(child.name())
        time.sleep(0.02)
    driver.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output, _ = driver.communicate(timeout=60)
    assert driver.returncode == 75, output[-3000:]
    assert time.monotonic() - sent < 20
    assert "SIGTERM: stopped before training started; rerun the same command" in output
    assert survivors(list(seen.values()), within=5) == [], "a process of the job outlived it"
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert [row["step"] for row in metrics(run_dir)] == [1, 2, 3]


@pytest.mark.alone  # its bound holds on a machine not shared with another run
@pytest.mark.parametrize("case", list(STUCK))
def test_a_stuck_rank_fails_the_job_within_the_timeout_naming_it_and_leaves_no_process(spawn, tmp_path, case):
    """SIGSTOP one rank: the watchdog ends the job (exit 1) within collective_timeout_s + 60 s,
    names that rank (by its pid), and no process of the job outlives it."""
    extra, moment = STUCK[case]
    run_dir = tmp_path / "stuck"
    process = spawn(command(run_dir, "train.max_steps=2000", f"train.collective_timeout_s={TIMEOUT_S}",
                            "logger.mode=disabled", "train.max_failures=0", *extra),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 5, process)
    victim = train_workers(process)[1]
    started = job_processes(process)
    deadline = time.monotonic() + 60
    while not moment(run_dir) and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    output, _ = process.communicate(timeout=TIMEOUT_S + 120)
    took = time.monotonic() - stopped_at
    print(f"{case}: exit {process.returncode} {took:.1f}s after SIGSTOP of pid {victim.pid}")
    assert process.returncode == 1, output[-3000:]
    assert took < TIMEOUT_S + 60, took
    [line] = [line for line in output.splitlines() if line.startswith("error: training failed")]
    assert f"stopped responding (pid {victim.pid}," in line, line
    assert " made no progress for " in line and f"train.collective_timeout_s={TIMEOUT_S}" in line
    if moment is in_a_checkpoint_save:
        assert "saving a checkpoint" in line, line
    assert survivors(started, within=5) == [], "a process of the job outlived it"


@pytest.mark.alone  # its bound holds on a machine not shared with another run
def test_two_runs_side_by_side_each_use_their_own_cluster_and_a_sigkilled_driver_leaves_no_process(spawn, tmp_path):
    """Two embedded Ray clusters at once: each job's Ray helpers find their own cluster. SIGKILL one driver mid-run:
    its reaper ends everything it started within 2 s, and the other run finishes untouched, without a traceback."""
    killed, finishing = (spawn(command(tmp_path / name, f"train.max_steps={steps}", "logger.mode=disabled",
                                       "cluster.num_workers=1"),  # the clusters are the point
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                         for name, steps in (("killed", 2000), ("finishing", 12)))
    wait_for_step(tmp_path / "killed", 3, killed)
    started = job_processes(killed)
    assert {"raylet", "gcs_server"} <= {p.name() for p in started}
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert survivors(started, within=2) == []  # the reaper kills them at once (docs/fault-tolerance.md)
    output = finishing.communicate(timeout=300)[0]
    assert finishing.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "multiple active Ray instances" not in output, output[-3000:]
    assert metrics(tmp_path / "finishing")[-1]["step"] == 12


def test_secrets_never_reach_the_run_directory_or_ray_logs(reference):
    """The reference run had secrets in its environment (tests/helpers.py SECRETS)."""
    assert reference.ray_sessions  # its embedded cluster's logs
    searched = [reference.run_dir, *reference.ray_sessions]
    leaks = subprocess.run(["grep", "-rl", "-e", "sentinel-", *map(str, searched)], capture_output=True, text=True)
    assert leaks.stdout == "", f"secrets found in: {leaks.stdout}"
    assert "sentinel-" not in reference.output
    assert all(value.startswith("sentinel-") for value in SECRETS.values())  # what the grep above looks for


def test_a_crash_after_the_final_checkpoint_only_writes_the_summary(reference, tmp_path):
    run_dir = tmp_path / "almost"
    shutil.copytree(reference.run_dir, run_dir)
    (run_dir / "summary.json").unlink()  # died between the last checkpoint and the summary
    result = run(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    written, expected = summary(run_dir), summary(reference.run_dir)
    assert written["final_train_loss"] == expected["final_train_loss"]
    assert written["final_val_loss"] == pytest.approx(expected["final_val_loss"], abs=1e-6)
    assert metrics(run_dir) == metrics(reference.run_dir)


def test_a_lock_file_left_by_a_killed_deepspeed_op_build_does_not_block_the_next_run(reference):
    """torch's build lock outlives a builder killed mid-build (e.g. by the watchdog during setup); DeepSpeed
    would then wait on it forever at every start. The reference run started with one left behind: it
    cleared it and trained."""
    assert not reference.stale_lock.exists()
    assert events(reference.run_dir) == ["start", "finished"]


@contextlib.contextmanager
def small_filesystem(folder: Path, size_bytes: int):
    """A tmpfs of `size_bytes` mounted at `folder` (root only: the tests run as root, as Slurm's do)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes // 4096 * 4096}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (it needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_full_disk_ends_the_run_in_one_line_and_the_run_resumes_exactly_in_a_copy_elsewhere(reference, tmp_path):
    """A filesystem with room for two of the reference job's checkpoints (steps 5 and 10) but not a third: step
    15's is refused before a byte of it is written; the run directory, copied elsewhere, finishes the run on the
    reference's trajectory."""
    checkpoint = sum(f.stat().st_size for f in (reference.run_dir / "checkpoints" / "step_00000005").iterdir())
    with small_filesystem(tmp_path / "small", 2 * checkpoint + checkpoint // 2 + (1 << 20)) as small:
        run_dir = small / "run"
        result = run(run_dir)
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
        assert errors[0].startswith(f"error: training failed: no space left for the checkpoint of step 15 in "
                                    f"{run_dir / 'checkpoints'}: ") and " free on its filesystem" in errors[0]
        assert "the newest complete checkpoint (step 10)" in errors[0]
        assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000005",
                                                                                    "step_00000010"]
        assert events(run_dir) == ["start", "failed"]
        elsewhere = tmp_path / "elsewhere"
        shutil.copytree(run_dir, elsewhere)
    resumed = run(elsewhere)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert events(elsewhere) == ["start", "failed", "resume", "finished"]
    assert_same_trajectory(elsewhere, reference.run_dir)


@pytest.mark.alone  # its bound holds on a machine not shared with another run
def test_a_worker_killed_by_rays_memory_monitor_names_oom(spawn, tmp_path):
    """Ray's memory monitor, set to act 2.5 GB above what the machine uses now (more than the one-worker job
    needs); once the job trains, this test takes memory half a GB at a time until the monitor kills processes
    of the job."""
    import numpy as np

    memory = psutil.virtual_memory()
    threshold = (memory.total - memory.available + 2.5e9) / memory.total
    env = {**os.environ, "RAY_memory_usage_threshold": f"{threshold:.4f}", "RAY_memory_monitor_refresh_ms": "100"}
    run_dir = tmp_path / "oom"
    process = spawn(command(run_dir, "train.max_steps=100000", "train.max_failures=0", "logger.mode=disabled",
                            "cluster.num_workers=1"), env=env,  # one worker is enough to kill
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run_dir, 3, process)
    balloon = []  # every page touched: really used
    while process.poll() is None and psutil.virtual_memory().available > 2e9:
        balloon.append(np.ones(int(5e8), dtype=np.uint8))
        time.sleep(0.2)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        balloon.clear()
    assert process.returncode == 1, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert "out of memory (OOM)" in line and "running low on memory" in line
    assert json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])["event"] == "failed"
