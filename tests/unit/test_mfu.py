"""MFU and HFU arithmetic (PaLM appendix B), the accelerator table, and the cached CPU probe."""

from __future__ import annotations

import pytest

from orchestrator.config.compose import compose
from orchestrator.plan import mfu
from orchestrator.plan.plan import make_plan
from orchestrator.train import peak_flops


def test_mfu_of_the_124m_shape_matches_a_hand_computation():
    plan = make_plan(compose(["model=gpt2-124m", "train.seq_len=1024"]))
    # By hand: N = 124,439,808 parameters; 6N = 746,638,848; 12 x L x H x Q x T = 12 x 12 x 12 x 64 x 1024
    # = 113,246,208; 859,885,056 FLOPs per token. At 100,000 tokens/s on 8 H100 SXM (989 TFLOP/s bf16 dense):
    # 8.59e13 / 7.912e15 = 0.010868...
    flops_per_token = 124_439_808 * 6 + 12 * 12 * 12 * 64 * 1024
    assert plan.flops_per_token == flops_per_token == 859_885_056
    peak = mfu.table_peak_flops("NVIDIA H100 80GB HBM3", "bf16")
    assert peak == 989e12
    assert mfu.utilization(plan.flops_per_token, 100_000, peak, 8) == pytest.approx(0.0108681, rel=1e-5)


def test_hfu_counts_the_forward_pass_checkpointing_recomputes():
    assert mfu.hfu_factor(mfu.checkpointed_layers("full", 2, 12), 12) == pytest.approx(4 / 3)
    assert mfu.hfu_factor(mfu.checkpointed_layers("none", 2, 12), 12) == 1.0
    # every_n with n=4 on 12 layers checkpoints layers 0, 4 and 8: a quarter of the layers.
    assert mfu.checkpointed_layers("every_n", 4, 12) == 3
    assert mfu.hfu_factor(3, 12) == pytest.approx(1 + 0.25 / 3)


@pytest.mark.parametrize(("name", "precision", "tflops"), [
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
    ("NVIDIA A10G", "fp16", 125.0),
    ("NVIDIA L4", "bf16", 121.0),
    ("NVIDIA L40", "bf16", 181.0),  # not the L4's figure: names match as whole words
    ("NVIDIA L40S", "bf16", 362.0),
    ("NVIDIA H200 NVL", "bf16", 835.0),  # not the SXM's
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
    ("NVIDIA GH200 480GB", "bf16", 989.0),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2),  # FP32 accumulate, not FP16 accumulate's 330.3
    ("Tesla T4", "fp32", 8.1),
])
def test_peak_comes_from_the_dense_datasheet_figure(name, precision, tflops):
    assert mfu.table_peak_flops(name, precision) == tflops * 1e12


def test_unknown_devices_have_no_table_figure():
    assert mfu.table_peak_flops("Some Future Accelerator", "bf16") is None


def test_cpu_peak_is_probed_once_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(peak_flops, "matmul_probe", lambda *args: calls.append(args) or 1.5e11)
    first = peak_flops.peak_flops("cpu", "fp32", 1, tmp_path)
    second = peak_flops.peak_flops("cpu", "fp32", 1, tmp_path)
    assert first[0] == second[0] == 1.5e11
    assert len(calls) == 1 and (tmp_path / "peak_flops.json").exists()
    peak_flops.peak_flops("cpu", "fp32", 2, tmp_path)  # another thread count is another figure
    assert len(calls) == 2


def test_the_matmul_probe_measures_a_plausible_rate():
    flops = peak_flops.matmul_probe("cpu", "fp32", 1, seconds=0.1)
    assert 1e8 < flops < 1e13
