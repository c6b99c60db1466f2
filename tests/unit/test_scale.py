"""The plan at scale: each formula against a hand computation, and `orchestrator plan` at 16,384 GPUs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from orchestrator.config.compose import compose, to_yaml
from orchestrator.config.schema import Offload, Precision
from orchestrator.plan.calibrate import calibrate
from orchestrator.plan.hardware import LLAMA3_DEVICE_MTBF_HOURS, hardware_for
from orchestrator.plan.memory import GB, model_states
from orchestrator.plan.plan import make_plan
from orchestrator.plan.scale import (
    checkpoint_bytes,
    comm_bytes_per_rank,
    comm_volume_psi,
    estimate,
    goodput,
    young_daly_interval_s,
)

pytestmark = pytest.mark.unit

PSI, N = 7_500_000_000, 64  # the ZeRO paper's example: 7.5B parameters on 64 data-parallel ranks

LLAMA_405B = ["model=llama-405b", "cluster=slurm", "cluster.nodes=2048", "cluster.gpus_per_node=8",
              "cluster.hardware=h100_sxm", "zero=3"]


@pytest.mark.parametrize(("stage", "paper_gb"), [(0, 120.0), (2, 16.6), (3, 1.9)])
def test_zero_paper_per_rank_model_states(stage, paper_gb):
    states = model_states(PSI, N, stage, Precision.bf16, Offload.none, Offload.none)
    assert sum(states.values()) / GB == pytest.approx(paper_gb, rel=0.02)


@pytest.mark.parametrize(("stage", "psi"), [(0, 2), (1, 2), (2, 2), (3, 3)])
def test_communication_per_step_is_2_psi_through_stage_2_and_3_psi_at_stage_3(stage, psi):
    assert comm_volume_psi(stage, grad_accum=1) == psi
    # bf16 ring collectives: each rank moves (N-1)/N of the volume, 2 bytes an element
    assert comm_bytes_per_rank(PSI, N, stage, 1, 2) == pytest.approx(psi * PSI * 2 * 63 / 64)


def test_accumulation_multiplies_the_per_micro_batch_collectives_only():
    assert comm_volume_psi(1, grad_accum=4) == 2  # gradients all-reduced once, at the boundary
    assert comm_volume_psi(2, grad_accum=4) == 5  # reduce-scatter per micro-batch + one parameter all-gather
    assert comm_volume_psi(3, grad_accum=4) == 12  # 2 all-gathers + 1 reduce-scatter per micro-batch
    assert comm_bytes_per_rank(PSI, 1, 3, 1, 2) == 0  # one rank talks to nobody


@pytest.mark.parametrize(
    ("stage", "precision", "rank0", "other", "total"),
    [
        (0, "bf16", 14 * PSI, 0, 14 * PSI),  # rank 0 writes the bf16 module and the fp32 master, m and v
        (1, "bf16", 2 * PSI + 12 * PSI / N, 12 * PSI / N, 14 * PSI),
        (2, "bf16", 2 * PSI + 12 * PSI / N, 12 * PSI / N, 14 * PSI),
        (3, "bf16", 12 * PSI / N, 12 * PSI / N, 12 * PSI),  # the fp32 partitions are the parameters
        (0, "fp32", 12 * PSI, 0, 12 * PSI),  # fp32 Adam at stage 0 keeps no master copy
        (2, "fp32", 4 * PSI + 12 * PSI / N, 12 * PSI / N, 16 * PSI),
        (3, "fp32", 12 * PSI / N, 12 * PSI / N, 12 * PSI),
    ],
)
def test_checkpoint_bytes_per_stage_and_precision(stage, precision, rank0, other, total):
    ck = checkpoint_bytes(PSI, N, stage, precision)
    assert ck.rank0 == pytest.approx(rank0)
    assert ck.other_rank == pytest.approx(other)
    assert ck.total == pytest.approx(total)


def test_young_daly_interval_by_hand():
    # a 60 s checkpoint and a 3 h job MTBF: sqrt(2 x 60 x 10800) = sqrt(1,296,000) = 1138.4 s
    assert young_daly_interval_s(60, 3 * 3600) == pytest.approx(1138.42, abs=0.01)


def test_goodput_arithmetic_by_hand():
    # checkpoint every hour of work, 60 s to write, 600 s to restart, a failure every 3 h:
    # lost to failures (600 + (3600 + 60) / 2) / 10800 = 0.225; goodput 0.775 / (1 + 60/3600) = 0.76230
    g = goodput(interval_s=3600, checkpoint_s=60, restart_s=600, mtbf_s=10800)
    assert g.failures == pytest.approx(0.225)
    assert g.goodput == pytest.approx(0.775 / (1 + 60 / 3600))
    assert g.checkpointing == pytest.approx(g.goodput * 60 / 3600)
    assert g.goodput + g.checkpointing + g.failures == pytest.approx(1.0)


def test_young_daly_interval_maximises_goodput():
    best = young_daly_interval_s(60, 10800)
    at = [goodput(best * f, 60, 600, 10800).goodput for f in (0.5, 1.0, 2.0)]
    assert at[1] > at[0] and at[1] > at[2]


def test_failures_faster_than_saved_work_mean_the_run_never_finishes():
    assert goodput(interval_s=22_000, checkpoint_s=60, restart_s=600, mtbf_s=10800).goodput == 0


def test_default_device_mtbf_is_llama3s_one_interruption_per_3_hours_on_16384_gpus():
    assert LLAMA3_DEVICE_MTBF_HOURS == pytest.approx(50_677, abs=1)
    assert LLAMA3_DEVICE_MTBF_HOURS / 16_384 == pytest.approx(54 * 24 / 419)


def test_llama_405b_on_16384_h100s():
    cfg = compose(LLAMA_405B)
    plan = make_plan(cfg)
    scale = estimate(cfg, plan)
    psi = plan.params
    assert scale.devices == 16_384 and scale.nodes == 2048
    assert 2 <= scale.job_mtbf_hours <= 4
    assert scale.checkpoint_bytes_total == pytest.approx(12 * psi, rel=0.02)  # fp32 master, m, v; stage 3
    assert scale.model_states_bytes_total == pytest.approx(16 * psi)  # + bf16 parameters and gradients
    assert scale.comm_bytes_per_rank_per_step == pytest.approx(3 * psi * 2, rel=0.001)
    # compute: 6N + attention FLOPs per token x 16.8M tokens / (16,384 x 989 TFLOP/s x 0.40)
    assert scale.compute_time_s == pytest.approx(plan.flops_per_token * plan.tokens_per_step
                                                 / (16_384 * 989e12 * 0.40))
    assert scale.comm_time_s == pytest.approx(scale.comm_bytes_per_rank_per_step / 50e9)
    assert scale.step_time_s == pytest.approx(scale.compute_time_s + scale.comm_time_s)  # overlap_comm=false
    assert scale.optimal_ckpt_interval_s == pytest.approx(
        math.sqrt(2 * scale.checkpoint_write_s * scale.job_mtbf_hours * 3600))
    assert scale.optimal_ckpt_interval_steps == round(scale.optimal_ckpt_interval_s / scale.step_time_s)
    best = goodput(scale.optimal_ckpt_interval_steps * scale.step_time_s, scale.checkpoint_write_s,
                   scale.restart_s, scale.job_mtbf_hours * 3600)
    assert (scale.goodput_at_optimum, scale.checkpointing_share_at_optimum, scale.failure_share_at_optimum) == (
        pytest.approx(best.goodput), pytest.approx(best.checkpointing), pytest.approx(best.failures))
    assert scale.goodput_at_optimum > scale.goodput  # every 100 steps (~1.5 h) is far too rare for a 3 h MTBF
    assert scale.wall_hours == pytest.approx(scale.work_hours / scale.goodput)
    assert scale.expected_interruptions == pytest.approx(scale.wall_hours / scale.job_mtbf_hours)
    assert scale.device_hours == pytest.approx(scale.wall_hours * 16_384)


def test_overlap_bounds_the_step_by_the_larger_of_compute_and_communication():
    cfg = compose([*LLAMA_405B, "zero.overlap_comm=true"])
    scale = estimate(cfg, make_plan(cfg))
    assert scale.step_time_s == pytest.approx(max(scale.compute_time_s, scale.comm_time_s))
    assert scale.bound_by == "communication"


def test_hardware_keys_override_the_preset():
    slow = compose([*LLAMA_405B, "cluster.inter_node_gbps=25", "cluster.device_mtbf_hours=100000",
                    "cluster.device_hour_cost=2.5"])
    base, changed = (estimate(c, make_plan(c)) for c in (compose(LLAMA_405B), slow))
    assert changed.comm_time_s == pytest.approx(2 * base.comm_time_s)
    assert changed.job_mtbf_hours == pytest.approx(100_000 / 16_384)
    assert changed.cost == pytest.approx(changed.device_hours * 2.5)
    assert base.cost is None


def test_one_machine_communicates_over_its_own_links():
    cfg = compose(["model=llama-8b", "cluster=slurm", "cluster.nodes=1", "cluster.gpus_per_node=8",
                   "cluster.hardware=a100_80g", "zero=2"])
    scale = estimate(cfg, make_plan(cfg))
    assert scale.comm_link == "within a machine" and scale.comm_bandwidth_gbps == 300
    assert hardware_for(cfg.cluster, True).peak_tflops_bf16 == 312


def test_auto_hardware_says_it_assumed_h100_for_gpus():
    cfg = compose(["model=llama-8b", "cluster=slurm", "cluster.nodes=2"])
    scale = estimate(cfg, make_plan(cfg))
    assert scale.hardware["name"] == "h100_sxm"
    assert any("assumed: set cluster.hardware" in w for w in scale.warnings)


def test_a_checkpoint_interval_far_from_the_optimum_is_warned_about():
    far = compose([*LLAMA_405B, "train.ckpt_every=100"])
    scale = estimate(far, make_plan(far))
    assert scale.optimal_ckpt_interval_steps < 50
    assert [w for w in scale.warnings if w.startswith("train.ckpt_every=100 is ")]
    near = compose([*LLAMA_405B, f"train.ckpt_every={scale.optimal_ckpt_interval_steps}"])
    assert not [w for w in estimate(near, make_plan(near)).warnings if w.startswith("train.ckpt_every")]
    assert estimate(near, make_plan(near)).goodput == pytest.approx(scale.goodput_at_optimum)


def _plan_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", "plan", *args], capture_output=True, text=True,
                          timeout=60)


def test_plan_json_puts_the_scale_figures_under_plan_scale_and_text_prints_them_in_one_block():
    done = _plan_cli(*LLAMA_405B, "plan.format=json")
    assert done.returncode == 0, done.stderr
    scale = json.loads(done.stdout)["plan"]["scale"]
    for key in ("step_time_s", "compute_time_s", "comm_time_s", "comm_bytes_per_rank_per_step",
                "checkpoint_bytes_total", "checkpoint_write_s", "job_mtbf_hours", "optimal_ckpt_interval_steps",
                "expected_interruptions", "goodput", "wall_hours", "device_hours"):
        assert isinstance(scale[key], (int, float)), key
    assert 2 <= scale["job_mtbf_hours"] <= 4
    text = _plan_cli(*LLAMA_405B)
    assert text.returncode == 0, text.stderr
    block = text.stdout[text.stdout.index("at scale: "):text.stdout.index("deepspeed config:")]
    assert f"job MTBF {scale['job_mtbf_hours']:.3g} h" in block
    assert f"every {scale['optimal_ckpt_interval_steps']:,} steps" in block
    assert "communication-bound" in block and "16,384 devices" in block


@pytest.mark.parametrize(
    ("override", "key"),
    [("cluster.device_mtbf_hours=0", "cluster.device_mtbf_hours"), ("plan.assumed_mfu=1.5", "plan.assumed_mfu"),
     ("cluster.hardware=tpu", "cluster.hardware")],
)
def test_bad_hardware_values_are_refused(override, key):
    done = _plan_cli(*LLAMA_405B, override)
    assert done.returncode == 2 and key in done.stderr and not done.stdout


def test_calibrating_from_a_folder_without_a_run_is_refused(tmp_path):
    done = _plan_cli("--calibrate", str(tmp_path))
    assert done.returncode == 2
    assert "no summary.json" in done.stderr


def _fabricated_run(tmp_path, overrides, **summary):
    """A run directory as train writes it: its config and the summary.json figures calibration reads."""
    cfg = compose(overrides)
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    base = {"steps": 20, "tokens": 20 * 4096, "tokens_per_s": 4096 / summary["step_time_s"], "mfu": 0.2,
            "device": "cpu", "peak_flops_per_device": 1e12, "node_id_per_rank": ["a", "a"]}
    (tmp_path / "summary.json").write_text(json.dumps({**base, **summary}))
    return cfg


def test_calibration_takes_the_modelled_communication_out_of_the_measured_step(tmp_path):
    cfg = _fabricated_run(tmp_path, ["model=tiny", "zero=3", "cluster.num_workers=2"], step_time_s=0.5,
                          checkpoint_write_s=2.0, checkpoint_bytes=4 * GB)
    plan = make_plan(cfg)
    cal = calibrate(tmp_path)
    hardware = cal.apply(hardware_for(cfg.cluster, False), plan.precision)
    at_peak = estimate(cfg, plan, hardware, mfu_value=1.0)
    compute_s = 0.5 - min(at_peak.comm_time_s, 0.25)  # at most half the step counts as communication
    assert cal.compute_mfu == pytest.approx(at_peak.compute_time_s / compute_s)
    assert cal.storage_write_gbps == pytest.approx(2.0)  # 4 GB from one machine in 2 s
    replanned = estimate(cfg, plan, hardware, cal.compute_mfu)
    assert replanned.step_time_s == pytest.approx(0.5)  # the run's own config predicts the step it measured


def test_a_cpu_run_cannot_calibrate_a_gpu_plan(tmp_path):
    _fabricated_run(tmp_path, ["model=tiny"], step_time_s=0.5)
    done = _plan_cli(*LLAMA_405B, "--calibrate", str(tmp_path))
    assert done.returncode == 2 and not done.stdout
    assert "trained on cpu" in done.stderr and "same kind of machine" in done.stderr


def test_the_model_states_line_appears_only_when_a_checkpoint_is_smaller():
    """fp32 at stage 2 saves parameters, master, m and v: 16 bytes per parameter, as much as it holds."""
    for overrides, shown in ((["zero=3"], True), (["zero=2", "train.precision=fp32"], False)):
        cfg = compose(["model=tiny", "cluster.num_workers=2", *overrides])
        text = estimate(cfg, make_plan(cfg)).describe()
        assert ("of model states in memory" in text) is shown, overrides


@pytest.mark.parametrize(("remove", "says"), [("config.yaml", "no config.yaml"),
                                              ("peak_flops_per_device", "no peak_flops_per_device")])
def test_a_run_directory_missing_what_calibration_reads_is_refused_in_one_line(tmp_path, remove, says):
    _fabricated_run(tmp_path, ["model=tiny"], step_time_s=0.5)
    if remove == "config.yaml":
        (tmp_path / "config.yaml").unlink()
    else:
        summary = json.loads((tmp_path / "summary.json").read_text())
        del summary[remove]
        (tmp_path / "summary.json").write_text(json.dumps(summary))
    done = _plan_cli("model=tiny", "--calibrate", str(tmp_path))
    assert done.returncode == 2 and not done.stdout
    [line] = done.stderr.strip().splitlines()
    assert says in line
