"""A resumed run is indistinguishable from one that never stopped.

Real faults against the real CLI: a worker SIGKILLed mid-run, SIGTERM to the driver, a stuck
rank, truncated and unmarked checkpoints, secrets in the environment. Every run is the same
small job (2 workers, fp32, fixed seed, checkpoints every 5 steps) so each can be compared
step by step with one uninterrupted reference run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import TINY, events, job_processes, metrics, orchestrator, survivors, train_workers, wait_for_step
from tests.helpers import command as cli
from tests.wandb_reader import run_ids

STEPS = 30
# Small data: 9 batches per rank per epoch, so step 10 onwards is the second, reshuffled pass.
JOB = [*TINY, "data.max_bytes=20000", "train.micro_batch_size=8", "train.precision=fp32", f"train.max_steps={STEPS}",
       "train.ckpt_every=5", "train.eval_every=0", "train.log_every=1"]


def command(run_dir: Path, *extra: str) -> list[str]:
    return cli("train", *JOB, f"run_dir={run_dir}", *extra)


def run(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return orchestrator("train", *JOB, f"run_dir={run_dir}", *extra, env=env, timeout=600)


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def assert_same_trajectory(run_dir: Path, reference: Path) -> None:
    rows, ref = metrics(run_dir), metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # every step exactly once
    for row, expected in zip(rows, ref, strict=True):
        assert row["loss"] == pytest.approx(expected["loss"], abs=1e-6), row["step"]


def test_sigkill_of_a_worker_restarts_once_and_resumes_exactly(spawn, reference, tmp_path):
    run_dir = tmp_path / "killed"
    process = spawn(command(run_dir, "train.max_failures=1"), stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 15, process)
    victims = train_workers(process)
    assert len(victims) == 2
    victims[1].send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert events(run_dir) == ["start", "resume", "finished"]  # exactly one restart
    assert_same_trajectory(run_dir, reference)
    # Each attempt writes its own offline-run-<time>-<id> folder; all must carry the same run id
    # (a killed attempt may not have flushed its run record, so the folder name is the witness).
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    ids = {f.parent.name.rsplit("-", 1)[1] for f in files} | {i for f in files for i in run_ids(f)}
    assert ids == {json.loads((run_dir / "run.json").read_text())["run_id"]}


def test_sigterm_to_the_driver_checkpoints_exits_75_and_the_rerun_matches(spawn, reference, tmp_path):
    run_dir = tmp_path / "preempted"
    process = spawn(command(run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 10, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 75, output[-3000:]
    stopped = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert stopped["event"] == "preempted" and 10 <= stopped["step"] < STEPS
    assert (run_dir / "checkpoints" / f"step_{stopped['step']:08d}" / "COMPLETE").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{stopped['step']:08d}"

    result = run(run_dir)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_trajectory(run_dir, reference)
    ours, theirs = weights(run_dir), weights(reference)
    for name, tensor in ours.items():
        assert (tensor - theirs[name]).abs().max().item() <= 1e-6, name


@pytest.mark.parametrize("damage", ["truncate_a_shard", "flip_a_byte", "remove_the_marker"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(reference, tmp_path, damage):
    run_dir = tmp_path / "damaged"
    shutil.copytree(reference, run_dir)
    (run_dir / "summary.json").unlink()
    newest = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    if damage == "truncate_a_shard":
        shard = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        shard.write_bytes(shard.read_bytes()[:100])
    elif damage == "flip_a_byte":  # the same size: only the manifest's sha256 can tell
        shard = newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x40
        shard.write_bytes(bytes(data))
    else:
        (newest / "COMPLETE").unlink()  # what a writer killed between the shards and the marker leaves
    result = run(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert f"skipping checkpoint {newest}" in out
    if damage == "flip_a_byte":
        assert "zero_pp_rank_1_mp_rank_00_optim_states.pt does not match its sha256" in out
    assert f"resuming from {run_dir / 'checkpoints' / f'step_{STEPS - 5:08d}'}" in out
    assert_same_trajectory(run_dir, reference)


def test_checkpoints_exist_but_none_usable_is_an_error_with_the_paths(reference, tmp_path):
    run_dir = tmp_path / "ruined"
    shutil.copytree(reference, run_dir)
    for marker in (run_dir / "checkpoints").glob("*/COMPLETE"):
        marker.unlink()
    result = run(run_dir)
    assert result.returncode == 2
    assert "has checkpoints but none is usable" in result.stderr and "step_00000030" in result.stderr


def test_rerunning_a_finished_run_says_so_and_changes_nothing(reference, tmp_path):
    run_dir = tmp_path / "again"
    shutil.copytree(reference, run_dir)
    result = run(run_dir)
    assert result.returncode == 0
    assert "already finished at step 30" in result.stdout
    assert metrics(run_dir) == metrics(reference)


def in_a_checkpoint_save(run_dir: Path) -> bool:
    """A checkpoint folder exists that is not sealed yet: the ranks are writing it now."""
    return any(not (path / "COMPLETE").exists() for path in (run_dir / "checkpoints").glob("step_*"))


TIMEOUT_S = 10
STUCK = {
    "zero2-in-a-step": ([], lambda run_dir: True),
    "zero3-in-a-step": (["zero=3"], lambda run_dir: True),
    "zero2-in-a-checkpoint-save": (["train.ckpt_every=1", "model.hidden_size=256", "model.num_layers=4"],
                                   in_a_checkpoint_save),
}


@pytest.mark.parametrize("case", list(STUCK))
def test_a_stuck_rank_fails_the_job_within_the_timeout_naming_it_and_leaves_no_process(spawn, tmp_path, case):
    """SIGSTOP one rank: the watchdog ends the job (exit 1) within collective_timeout_s + 60 s,
    names that rank (by its pid), and no process of the job outlives it."""
    extra, moment = STUCK[case]
    run_dir = tmp_path / "stuck"
    process = spawn(command(run_dir, "train.max_steps=2000", f"train.collective_timeout_s={TIMEOUT_S}",
                            "train.max_failures=0", *extra),
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


def test_sigkill_of_the_driver_leaves_no_process_of_its_ray_cluster(spawn, tmp_path):
    run_dir = tmp_path / "orphans"
    process = spawn(command(run_dir, "train.max_steps=2000"), stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    wait_for_step(run_dir, 3, process)
    started = job_processes(process)
    assert {"raylet", "gcs_server"} <= {p.name() for p in started}
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert survivors(started, within=30) == []


def test_two_runs_started_together_both_finish_without_a_traceback(spawn, tmp_path):
    """Two embedded Ray clusters side by side: each job's Ray helpers find their own cluster."""
    runs = [spawn(command(tmp_path / name, "train.max_steps=6"), stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT, text=True) for name in ("first", "second")]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
        assert "Traceback" not in output and "multiple active Ray instances" not in output, output[-3000:]


def test_secrets_never_reach_the_run_directory_or_ray_logs(tmp_path):
    sentinels = {"WANDB_API_KEY": "sentinel-wandb-4f9a", "HF_TOKEN": "sentinel-hf-8c21",
                 "MY_SERVICE_PASSWORD": "sentinel-pw-77d0"}
    env = {**os.environ, **sentinels}
    sessions_before = set(Path("/tmp/ray").glob("session_2*"))
    run_dir = tmp_path / "secret"
    result = run(run_dir, "train.max_steps=6", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    new_sessions = set(Path("/tmp/ray").glob("session_2*")) - sessions_before
    assert new_sessions
    searched = [run_dir, *new_sessions]
    leaks = subprocess.run(["grep", "-rl", "-e", "sentinel-", *map(str, searched)], capture_output=True, text=True)
    assert leaks.stdout == "", f"secrets found in: {leaks.stdout}"
    assert "sentinel-" not in result.stdout + result.stderr


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_a_signal_to_one_worker_checkpoints_all_ranks_and_exits_75(spawn, tmp_path, sig):
    run_dir = tmp_path / "worker-signal"
    process = spawn(command(run_dir, "train.max_steps=2000"), stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
    wait_for_step(run_dir, 5, process)
    train_workers(process)[1].send_signal(sig)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 75, output[-3000:]
    stopped = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert stopped["event"] == "preempted"
    assert (run_dir / "checkpoints" / f"step_{stopped['step']:08d}" / "COMPLETE").is_file()


def test_a_crash_after_the_final_checkpoint_only_writes_the_summary(reference, tmp_path):
    run_dir = tmp_path / "almost"
    shutil.copytree(reference, run_dir)
    (run_dir / "summary.json").unlink()  # died between the last checkpoint and the summary
    result = run(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["final_train_loss"] == expected["final_train_loss"]
    assert summary["final_val_loss"] == pytest.approx(expected["final_val_loss"], abs=1e-6)
    assert metrics(run_dir) == metrics(reference)


def test_a_lock_file_left_by_a_killed_deepspeed_op_build_does_not_block_the_next_run(tmp_path):
    """torch's build lock outlives a builder killed mid-build (e.g. by the watchdog during setup);
    DeepSpeed would then wait on it forever at every start. The next run clears it and trains."""
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory("deepspeed_shm_comm", verbose=False)) / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    result = run(tmp_path / "run", "train.max_steps=3", "train.collective_timeout_s=60")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not lock.exists()


def test_a_worker_killed_by_rays_memory_monitor_names_oom(spawn, tmp_path):
    """Ray's memory monitor, set to act 2.5 GB above what the machine uses now (the job needs about 1.5);
    once the job trains, this test takes 2 GB more and the monitor kills processes of the job."""
    import numpy as np

    memory = psutil.virtual_memory()
    threshold = (memory.total - memory.available + 2.5e9) / memory.total
    env = {**os.environ, "RAY_memory_usage_threshold": f"{threshold:.4f}", "RAY_memory_monitor_refresh_ms": "100"}
    run_dir = tmp_path / "oom"
    process = spawn(command(run_dir, "train.max_steps=100000", "train.max_failures=0"), env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run_dir, 3, process)
    balloon = np.ones(int(2e9), dtype=np.uint8)  # every page touched: really used
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        del balloon
    assert process.returncode == 1, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert "out of memory (OOM)" in line and "running low on memory" in line
    assert json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])["event"] == "failed"
