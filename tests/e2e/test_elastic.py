"""Resume anywhere: a checkpoint written by N workers continues on M, as if nothing had changed.

Each stage starts from a 30-step run with a checkpoint every 5 steps (the session's reference job,
tests/helpers.py; at ZeRO-2 the session's reference run itself), loses everything after step 10 (what
a lost node leaves) and resumes the same run directory on 1 worker; that run then loses everything after
its own (1-worker) step-15 checkpoint and resumes on 2 workers again. The global batch is the same
throughout (micro 8 x accum 1 x 2 workers = micro 8 x accum 2 x 1 worker), so every loss after a change
must match an uninterrupted 2-worker run's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REFERENCE_JOB, REFERENCE_STEPS, metrics, orchestrator

pytestmark = pytest.mark.slow

JOB = REFERENCE_JOB
STEPS = REFERENCE_STEPS
STAGES = ["2", "3"]


def train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return orchestrator("train", *JOB, f"run_dir={run_dir}", "logger.mode=disabled", *extra)  # W&B: not under test


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in metrics(run_dir)]


def cut_back_to(run_dir: Path, step: int) -> None:
    """What a run that lost its node after the checkpoint of `step` leaves behind."""
    for later in range(step + 5, STEPS + 1, 5):
        shutil.rmtree(run_dir / "checkpoints" / f"step_{later:08d}")
    (run_dir / "checkpoints" / "latest").write_text(f"step_{step:08d}")
    (run_dir / "summary.json").unlink()


TRACKS = {"2": 1e-6, "3": 5e-3}
"""Relative loss difference a resume on another world size stays within (docs/fault-tolerance.md). Measured
here over the 30 steps: 4.7e-8 at ZeRO-2 (summation order only), and 3.3e-3 at ZeRO-3 (largest at step 18;
8.2e-4 over a 20-step job): ZeRO-3's universal resume is close, not exact, and why is not known yet."""


def assert_matches(run_dir: Path, reference: Path, stage: str) -> None:
    ours, theirs = losses(run_dir), losses(reference)
    assert [step for step, _ in ours] == list(range(1, STEPS + 1))  # every step once
    for (step, loss), (_, expected) in zip(ours, theirs, strict=True):
        assert loss == pytest.approx(expected, rel=TRACKS[stage]), step


@pytest.fixture(scope="module")
def references(reference, reference_zero3) -> dict[str, Path]:
    """An uninterrupted 2-worker run per ZeRO stage: the session's references (tests/e2e/conftest.py)."""
    return {"2": reference.run_dir, "3": reference_zero3.run_dir}


@pytest.fixture(scope="module")
def resumed_on_one(references, tmp_path_factory):
    """stage -> (the reference copied, cut back to step 10 and resumed on 1 worker; that command's result)."""
    done: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}

    def resume(stage: str) -> tuple[Path, subprocess.CompletedProcess]:
        if stage not in done:
            run_dir = tmp_path_factory.mktemp(f"on-one-zero{stage}") / "run"
            shutil.copytree(references[stage], run_dir)
            cut_back_to(run_dir, 10)
            done[stage] = run_dir, train(run_dir, f"zero={stage}", "cluster.num_workers=1")
        return done[stage]

    return resume


@pytest.mark.parametrize("stage", STAGES)
def test_two_workers_checkpoint_resumes_on_one(references, resumed_on_one, stage):
    run_dir, result = resumed_on_one(stage)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "grad_accum 1 -> 2 keeps the global batch of 16" in out
    assert "converting" in out and "to a universal checkpoint" in out
    assert (run_dir / "checkpoints" / "step_00000010" / "universal" / "manifest.json").is_file()
    assert_matches(run_dir, references[stage], stage)
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 1


@pytest.mark.parametrize("stage", STAGES)
def test_one_worker_checkpoint_resumes_on_two(references, resumed_on_one, tmp_path, stage):
    on_one, first = resumed_on_one(stage)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "run"
    shutil.copytree(on_one, run_dir)
    cut_back_to(run_dir, 15)  # step 15 was written by the one worker
    result = train(run_dir, f"zero={stage}", "train.grad_accum=2")  # on 2 workers
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "grad_accum 2 -> 1 keeps the global batch of 16" in out
    assert (run_dir / "checkpoints" / "step_00000015" / "universal" / "manifest.json").is_file()
    assert_matches(run_dir, references[stage], stage)
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2


def test_a_universal_folder_converted_by_hand_resumes_a_new_run(references, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(references["2"], source)
    universal = tmp_path / "step_00000010_universal"
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                    str(source / "checkpoints" / "step_00000010"), "--output_folder", str(universal),
                    "--inject_missing_state"], check=True, capture_output=True)
    run_dir = tmp_path / "run"
    refused = train(run_dir, "zero=2", "cluster.num_workers=1", "train.grad_accum=2", f"train.resume={universal}")
    assert refused.returncode == 2 and "add train.trust_checkpoint=true" in refused.stderr  # no hashes vouch for it
    result = train(run_dir, "zero=2", "cluster.num_workers=1", "train.grad_accum=2", f"train.resume={universal}",
                   "train.trust_checkpoint=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (universal / "manifest.json").is_file()  # its hashes, checked by every later resume
    ours = dict(losses(run_dir))
    assert sorted(ours) == list(range(11, STEPS + 1))
    for step, expected in losses(references["2"])[10:]:
        assert ours[step] == pytest.approx(expected, rel=TRACKS["2"]), step


def test_a_global_batch_the_new_shape_cannot_keep_is_refused_with_the_numbers(references, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(references["2"], run_dir)
    cut_back_to(run_dir, 10)
    result = train(run_dir, "zero=2", "train.micro_batch_size=3")
    assert result.returncode == 2
    assert "global batch of 16" in result.stderr and "3 x 2 workers = 6" in result.stderr
    assert not (run_dir / "checkpoints" / "step_00000010" / "universal").exists()  # nothing converted
