"""Quantization-aware training under ZeRO-3: the exported model is really quantized, and computes
what the fake-quantized model computed (the converted perplexity equals the last evaluation's)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import TINY


def test_qat_int4_under_zero3_exports_a_converted_model_matching_the_fake_quantized_one(tmp_path):
    import torch

    from orchestrator.compress.artifact import load
    from orchestrator.compress.quantization import is_quantized

    run_dir = tmp_path / "qat"
    result = subprocess.run([sys.executable, "-m", "orchestrator", "train", *TINY, "data.max_bytes=20000",
                             "model.arch=llama", "model.num_kv_heads=2", "zero=3", "compress=qat_int4",
                             "train.max_steps=8", "train.eval_every=0", "train.ckpt_every=0", f"run_dir={run_dir}"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((run_dir / "model" / "compress_report.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert report["fake_quant_val_loss"] == summary["final_val_loss"]
    assert abs(report["ppl_change"]) <= 0.001
    assert report["linear_weight_bytes_after"] < 0.3 * report["linear_weight_bytes_before"]
    model = load(run_dir / "model")
    layers = model.model.layers[0]
    assert is_quantized(layers.mlp.down_proj.weight) and is_quantized(layers.self_attn.k_proj.weight)
    assert not is_quantized(model.lm_head.weight)  # tied to the embedding: left alone
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 100, (1, 16))).logits).all()
