"""Gradual magnitude pruning while training under ZeRO-3: an exactly sparse export, and exact resume.

Two runs of the same small job (2 workers, ZeRO-3, masks updated every 2 steps up to 50% at
step 12 of 16, checkpoints every 4 steps): one uninterrupted, one whose worker is SIGKILLed
mid-schedule and restarted by Ray Train from the step-4/8 checkpoint.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import TINY, assert_same_losses, metrics, sigkill_a_worker_and_finish
from tests.helpers import command as cli

pytestmark = pytest.mark.slow

STEPS = 16
JOB = [*TINY, "data.max_bytes=20000", "train.micro_batch_size=8", "train.precision=fp32", f"train.max_steps={STEPS}",
       "train.ckpt_every=4", "train.eval_every=0", "train.log_every=1", "logger.mode=disabled", "zero=3",
       "compress=gradual_prune50", "compress.passes.0.start_step=0", "compress.passes.0.update_every=2",
       "compress.passes.0.end_step=12"]


def command(run_dir: Path, *extra: str) -> list[str]:
    return cli("train", *JOB, f"run_dir={run_dir}", *extra)


def prunable_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    state = load_file(run_dir / "model" / "model.safetensors")
    return {k: v for k, v in state.items() if k.endswith(".weight") and (".attn.c_" in k or ".mlp.c_" in k)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("gradual") / "run"
    result = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_zero3_gradual_pruning_exports_an_exactly_sparse_plain_model(reference):
    import json

    from transformers import AutoModelForCausalLM

    weights = prunable_weights(reference)
    assert len(weights) == 8
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert abs(zeros / total - 0.5) <= 0.005
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["compress"]["gradual_prune50"]["sparsity"] == pytest.approx(zeros / total)
    report = json.loads((reference / "model" / "compress_report.json").read_text())
    assert report["schedule"] == {"start_step": 0, "end_step": 12, "final_sparsity": 0.5, "update_every": 2}
    logged = [row["sparsity"] for row in metrics(reference)]
    assert logged[0] < logged[5] < logged[11] == logged[-1] == pytest.approx(0.5, abs=1e-3)  # the cubic ramp
    model = AutoModelForCausalLM.from_pretrained(str(reference / "model"))  # no mask keys: a plain GPT-2
    assert not any("mask" in name for name, _ in model.named_buffers())


def test_sigkill_mid_schedule_resumes_with_the_same_losses_and_masks(reference, tmp_path):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(command(run_dir, "train.max_failures=1"), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    sigkill_a_worker_and_finish(run_dir, process, 7, limit=600)
    assert_same_losses(run_dir, reference, STEPS)
    for row, expected in zip(metrics(run_dir), metrics(reference), strict=True):
        assert row["sparsity"] == expected["sparsity"], row["step"]
    ours, theirs = prunable_weights(run_dir), prunable_weights(reference)
    for name, tensor in ours.items():
        assert torch_equal_zeros(tensor, theirs[name]), name


def torch_equal_zeros(a, b) -> bool:
    """Same pruned positions, and the same values within 1e-6 elsewhere."""
    return bool(((a == 0) == (b == 0)).all()) and (a - b).abs().max().item() <= 1e-6
