"""Pruning while training at the ZeRO stages the e2e test (tests/e2e/test_gradual_prune.py, ZeRO-3) does not
cover: plain data parallelism, ZeRO-2 and ZeRO-3 with CPU offload. Each is a short run whose masks reach 50%
by step 4 of 6; the exported model must be exactly that sparse, as the docs promise for every stage."""

from __future__ import annotations

import pytest

from orchestrator.config.compose import compose
from orchestrator.train.driver import train
from orchestrator.train_command import standard_hooks
from tests.helpers import TINY, summary

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("zero", ["0", "2", "3_offload"])
def test_gradual_pruning_exports_an_exactly_sparse_model_at_this_stage(ray_cluster, tmp_path, zero):
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    cfg = compose([*TINY, f"zero={zero}", "train.precision=fp32", "train.max_steps=6", "train.eval_every=0",
                   "train.ckpt_every=0", "logger.mode=disabled", "compress=gradual_prune50",
                   "compress.passes.0.start_step=0", "compress.passes.0.update_every=2",
                   "compress.passes.0.end_step=4", f"run_dir={run_dir}"])
    train(cfg, hooks=standard_hooks())
    state = load_file(run_dir / "model" / "model.safetensors")
    weights = [w for name, w in state.items() if name.endswith(".weight") and (".attn.c_" in name or ".mlp.c_" in name)]
    assert len(weights) == 8
    exported = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert abs(exported - 0.5) <= 0.005
    assert summary(run_dir)["compress"]["gradual_prune50"]["sparsity"] == pytest.approx(exported)
