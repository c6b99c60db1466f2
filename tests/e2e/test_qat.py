"""Quantization-aware training (int4 under ZeRO-3, int8 under ZeRO-2): the exported model is really quantized,
and computes what the fake-quantized model computed (the converted perplexity equals the last evaluation's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import TINY

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("pipeline", "zero"), [("qat_int4", "3"), ("qat_int8", "2")])
def test_qat_exports_a_converted_model_matching_the_fake_quantized_one(tmp_path, pipeline, zero):
    import torch

    from orchestrator.compress.artifact import load
    from orchestrator.compress.quantization import is_quantized

    run_dir = tmp_path / "qat"
    result = subprocess.run([sys.executable, "-m", "orchestrator", "train", *TINY, "data.max_bytes=20000",
                             "model.arch=llama", "model.num_kv_heads=2", f"zero={zero}", f"compress={pipeline}",
                             "train.max_steps=8", "train.eval_every=0", "train.ckpt_every=0", "logger.mode=disabled",
                             f"run_dir={run_dir}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((run_dir / "model" / "compress_report.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["fake_quant_val_loss"] == summary["final_val_loss"]  # the report quotes the loop's evaluation
    assert abs(report["ppl_change"]) <= 0.001
    assert report["linear_weight_bytes_after"] < 0.3 * report["linear_weight_bytes_before"]
    model = load(run_dir / "model")
    layers = model.model.layers[0]
    assert is_quantized(layers.mlp.down_proj.weight) and is_quantized(layers.self_attn.k_proj.weight)
    assert not is_quantized(model.lm_head.weight)  # tied to the embedding: left alone
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 100, (1, 16))).logits).all()
    # Measured here, apart from the run: the exported int4 model on every rank's validation batches computes the
    # loss the fake-quantized model had at its last evaluation in the training loop.
    converted = _validation_loss(model, run_dir)
    assert converted == pytest.approx(summary["final_val_loss"], rel=1e-3)


def _validation_loss(model, run_dir) -> float:
    import torch
    import torch.nn.functional as F

    from orchestrator.config.compose import compose
    from orchestrator.data.loader import eval_batches
    from orchestrator.data.pipeline import prepare

    cfg = compose([], str(run_dir / "config.yaml"))
    t, world = cfg.train, cfg.cluster.num_workers
    blocks = prepare(cfg.data, t.seq_len, t.seed).blocks("val")
    batches = [batch for rank in range(world)
               for batch in eval_batches(blocks, t.micro_batch_size, rank, world, t.eval_batches)]
    with torch.no_grad():
        losses = [F.cross_entropy(model(b).logits[:, :-1].flatten(0, 1).float(), b[:, 1:].flatten()).item()
                  for b in batches]
    return sum(losses) / len(losses)
