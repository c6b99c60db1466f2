"""The strongest guard we have: memory strategies must not change the math.

Same seed, same data, 2 workers, fp32, 20 steps: the loss at every step under ZeRO stages
1, 2, 3 and 3 with CPU offload equals plain data parallelism (stage 0) within 1e-5 relative,
and activation checkpointing on equals off.
"""

from __future__ import annotations

import json

import pytest

from orchestrator.config.compose import compose
from orchestrator.train.driver import train
from tests.helpers import TINY

STEPS = 20
_cache: dict[tuple[str, ...], list[float]] = {}


def losses(tmp_path_factory, *overrides: str) -> list[float]:
    if overrides not in _cache:
        run_dir = tmp_path_factory.mktemp("equivalence") / "run"
        cfg = compose([*TINY, "train.precision=fp32", f"train.max_steps={STEPS}", "train.eval_every=0",
                       "train.ckpt_every=0", "logger.mode=disabled", f"run_dir={run_dir}", *overrides])
        train(cfg)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        _cache[overrides] = [r["loss"] for r in rows]
    return _cache[overrides]


@pytest.mark.parametrize("zero", ["1", "2", "3", "3_offload"])
def test_zero_stage_matches_plain_data_parallel(ray_cluster, tmp_path_factory, zero):
    reference = losses(tmp_path_factory, "zero=0")
    candidate = losses(tmp_path_factory, f"zero={zero}")
    assert len(candidate) == len(reference) == STEPS
    assert reference[-1] < reference[0] - 0.5  # the runs really train
    assert candidate == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("mode", ["full", "every_n"])
def test_activation_checkpointing_does_not_change_the_loss(ray_cluster, tmp_path_factory, mode):
    reference = losses(tmp_path_factory, "zero=2")
    candidate = losses(tmp_path_factory, "zero=2", f"train.activation_checkpointing={mode}")
    assert candidate == pytest.approx(reference, rel=1e-5)


def test_activation_checkpointing_under_zero3(ray_cluster, tmp_path_factory):
    reference = losses(tmp_path_factory, "zero=3")
    candidate = losses(tmp_path_factory, "zero=3", "train.activation_checkpointing=full")
    assert candidate == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("zero", ["0", "1"])
def test_activation_checkpointing_under_the_other_stages(ray_cluster, tmp_path_factory, zero):
    reference = losses(tmp_path_factory, f"zero={zero}")
    candidate = losses(tmp_path_factory, f"zero={zero}", "train.activation_checkpointing=full")
    assert candidate == pytest.approx(reference, rel=1e-5)


def test_bf16_trains_on_cpu_and_tracks_fp32(ray_cluster, tmp_path_factory):
    """Mixed precision runs here too (CPU bf16); it follows the fp32 curve loosely, not exactly."""
    reference = losses(tmp_path_factory, "zero=2")
    run_dir = tmp_path_factory.mktemp("bf16") / "run"
    cfg = compose([*TINY, "train.precision=bf16", f"train.max_steps={STEPS}", "train.eval_every=0",
                   "train.ckpt_every=0", "logger.mode=disabled", f"run_dir={run_dir}", "zero=2"])
    train(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    bf16 = [r["loss"] for r in rows]
    assert bf16[-1] < bf16[0] - 0.5
    assert bf16 == pytest.approx(reference, rel=0.05)
