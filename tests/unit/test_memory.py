"""The memory model and zero=auto: pure arithmetic, checked against the ZeRO paper and by hand."""

from __future__ import annotations

import pytest

from orchestrator.config.compose import compose
from orchestrator.config.schema import ActivationCheckpointing, Offload, Precision
from orchestrator.plan.memory import activation_bytes, model_states
from orchestrator.plan.plan import make_plan

PSI, N = 1_000_000, 4


def _total(stage, precision, off_opt=Offload.none, off_param=Offload.none) -> int:
    return sum(model_states(PSI, N, stage, precision, off_opt, off_param).values())


@pytest.mark.parametrize(
    ("stage", "expected"),
    [(0, 16 * PSI), (1, 2 * PSI + 14 * PSI // N), (2, 2 * PSI + 14 * PSI // N), (3, 16 * PSI // N)],
)
def test_mixed_precision_model_states_follow_zero_paper(stage, expected):
    assert _total(stage, Precision.bf16) == expected


@pytest.mark.parametrize(
    ("stage", "expected"),
    [(0, 16 * PSI), (1, 4 * PSI + 16 * PSI // N), (2, 4 * PSI + 16 * PSI // N), (3, 20 * PSI // N)],
)
def test_fp32_model_states_include_deepspeeds_master_partition(stage, expected):
    assert _total(stage, Precision.fp32) == expected


def test_offload_moves_optimizer_and_params_out_of_device_memory():
    states = model_states(PSI, N, 3, Precision.bf16, Offload.cpu, Offload.cpu)
    assert states["optimizer"] == 0 and states["params"] == 0
    assert states["optimizer_offloaded"] == 12 * PSI // N
    assert states["grads_offloaded"] == 4 * PSI // N  # fp32 gradient partition for the CPU Adam


def test_llama_7b_on_32_gpus_at_zero3_holds_16_psi_over_32():
    plan = make_plan(compose(["model=llama-7b", "cluster=slurm", "cluster.nodes=4", "cluster.gpus_per_node=8",
                              "cluster.gpu_memory_gb=80", "zero=3"]))
    assert plan.world_size == 32 and plan.precision == "bf16"
    assert 6.7e9 < plan.params < 7.0e9
    assert plan.memory["model_states"] == pytest.approx(16 * plan.params / 32, rel=0.02)
    assert 3.3e9 < plan.memory["model_states"] < 3.5e9


def test_zero_auto_chooses_a_stage_that_fits_and_says_why():
    plan = make_plan(compose(["model=llama-7b", "cluster=slurm", "cluster.nodes=4", "cluster.gpus_per_node=8",
                              "cluster.gpu_memory_gb=80", "zero=auto"]))
    assert plan.fits
    assert plan.zero_stage in (1, 2, 3)
    assert plan.auto_reasons[0].startswith("rejected zero=0") and "80" in plan.auto_reasons[0]
    assert plan.auto_reasons[-1].startswith(f"chose zero={plan.zero_stage}")


def test_zero_auto_falls_back_to_checkpointing_then_smaller_micro_batch():
    base = ["model=llama-7b", "cluster=slurm", "cluster.nodes=1", "cluster.gpus_per_node=8", "zero=auto",
            "train.seq_len=4096", "train.micro_batch_size=8"]
    plan = make_plan(compose([*base, "cluster.gpu_memory_gb=24"]))
    assert plan.fits
    assert plan.activation_checkpointing == "full"
    assert plan.micro_batch_size < 8 and plan.micro_batch_size * plan.grad_accum == 8  # same global batch


def test_zero_auto_reports_when_nothing_fits():
    plan = make_plan(compose(["model=llama-7b", "cluster=slurm", "cluster.nodes=1", "cluster.gpus_per_node=1",
                              "cluster.gpu_memory_gb=1", "zero=auto"]))
    assert plan.fits is False
    assert "nothing fits" in plan.auto_reasons[-1]


def test_activations_scale_with_batch_and_shrink_with_checkpointing():
    cfg = compose(["model=gpt2-124m", "train.seq_len=1024"])
    one = activation_bytes(cfg, 1, Precision.bf16, ActivationCheckpointing.none)
    assert activation_bytes(cfg, 4, Precision.bf16, ActivationCheckpointing.none) == 4 * one
    full = activation_bytes(cfg, 1, Precision.bf16, ActivationCheckpointing.full)
    every2 = activation_bytes(cfg, 1, Precision.bf16, ActivationCheckpointing.every_n)
    assert full < every2 < one


def test_gpt2_layer_activations_match_korthikanti_without_dropout_and_score_matrices():
    # 34·sbh + 5·a·s²·b (16-bit, with dropout, eager attention) minus the 2·sbh dropout masks,
    # and SDPA keeps 4·a·s·b bytes of log-sum-exp instead of the 5·a·s²·b score matrices.
    from orchestrator.plan.memory import layer_activation_bytes

    cfg = compose(["model=gpt2-124m", "train.seq_len=1024"])
    s, b, h, a = 1024, 2, 768, 12
    assert layer_activation_bytes(cfg, b, Precision.bf16) == 32 * s * b * h + 4 * a * s * b


def test_precision_auto_is_fp32_on_cpu_and_bf16_on_gpus():
    assert make_plan(compose(["cluster.gpus_per_worker=0"])).precision == "fp32"
    assert make_plan(compose(["cluster=slurm"])).precision == "bf16"


def test_plan_refuses_a_local_run_that_cannot_fit():
    plan = make_plan(compose(["model=llama-7b", "zero=0", "cluster.cpu_memory_gb=8"]))
    assert plan.fits is False
    assert "> 8.0 GB" in plan.fit_problems[0]
