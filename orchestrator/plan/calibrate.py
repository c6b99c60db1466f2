"""`orchestrator plan --calibrate RUN_DIR`: the plan's assumed figures replaced by what a run measured.

A finished run's summary.json holds its steady step time, the peak FLOP/s its MFU divides by, and
the time and bytes of its last checkpoint (train/loop.py). Its measured step also holds the
communication the scale model predicts for that run's own config; taking that out leaves the
compute time, and so the utilization the computation reached. The plan then uses that utilization,
the run's peak and its storage bandwidth for the config being planned: the same run's config
predicts the step it measured, and a bigger batch, more steps or another ZeRO stage on the same
model family and machines are predicted from it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.compose import compose
from orchestrator.errors import ConfigError
from orchestrator.plan.hardware import Hardware, hardware_for
from orchestrator.plan.memory import GB
from orchestrator.plan.plan import make_plan
from orchestrator.plan.scale import estimate
from orchestrator.rundir import RunDir

MIN_COMPUTE_SHARE = 0.5
"""If the modelled communication would leave less than this share of the measured step to compute, the
link figures are too pessimistic for this machine: count at most half of the step as communication."""


@dataclass(frozen=True)
class Calibration:
    run_dir: str
    device: str
    """cpu or cuda: where the run trained."""
    step_time_s: float
    mfu: float
    """The run's measured MFU (its whole step)."""
    compute_mfu: float
    """The utilization of the computation alone, with the modelled communication taken out."""
    peak_flops_per_device: float
    storage_write_gbps: float | None
    """Checkpoint bytes per machine / write time; None when the run recorded no checkpoint."""

    def describe(self) -> str:
        storage = (f", checkpoint writes at {self.storage_write_gbps:.3g} GB/s per machine"
                   if self.storage_write_gbps else "")
        return (f"calibrated from {self.run_dir}: step {self.step_time_s:.4g} s measured, MFU {self.mfu:.3g} "
                f"measured ({self.compute_mfu:.3g} for the computation alone), peak "
                f"{self.peak_flops_per_device / 1e12:.4g} TFLOP/s per device{storage}")

    def apply(self, hardware: Hardware, precision: str) -> Hardware:
        return measured(hardware, precision, self.peak_flops_per_device, self.storage_write_gbps)


def measured(hardware: Hardware, precision: str, peak_flops: float, storage_write_gbps: float | None) -> Hardware:
    """`hardware` with a measured peak FLOP/s (at `precision`) and, when known, storage write bandwidth."""
    changes = {f"peak_tflops_{precision}": peak_flops / 1e12}
    if storage_write_gbps:
        changes["storage_write_gbps"] = storage_write_gbps
    return dataclasses.replace(hardware, **changes)


def read_summary(run_dir: Path) -> dict:
    """The run's summary.json, or a one-line ConfigError saying why it cannot calibrate a plan."""
    path = RunDir(run_dir).summary_file
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"--calibrate {run_dir}: no summary.json (not a run directory, or the run has not "
                           "finished)"]) from None
    except (OSError, ValueError) as error:
        raise ConfigError([f"--calibrate {run_dir}: summary.json is unreadable: {error}"]) from None
    if not summary.get("tokens_per_s") or not summary.get("steps"):
        raise ConfigError([f"--calibrate {run_dir}: the run logged no steady throughput (too few steps: "
                           "train.max_steps must exceed 2 x train.log_every)"])
    missing = [key for key in ("mfu", "peak_flops_per_device") if summary.get(key) is None]
    if missing:
        raise ConfigError([f"--calibrate {run_dir}: summary.json has no {' or '.join(missing)} (a run by an older "
                           "orchestrator, or an edited file): calibrate from a run of this version"])
    if not RunDir(run_dir).config.is_file():
        raise ConfigError([f"--calibrate {run_dir}: no config.yaml beside summary.json: calibration needs the "
                           "run's config"])
    return summary


def calibrate(run_dir: Path) -> Calibration:
    """What the run in `run_dir` measured, with the communication its own plan models taken out."""
    summary = read_summary(run_dir)
    run_cfg = compose([], str(RunDir(run_dir).config))
    run_plan = make_plan(run_cfg)
    step_s = summary.get("step_time_s") or summary["tokens"] / summary["steps"] / summary["tokens_per_s"]
    peak = summary["peak_flops_per_device"]
    hardware = measured(hardware_for(run_cfg.cluster, run_plan.uses_gpus), run_plan.precision, peak, None)
    ideal = estimate(run_cfg, run_plan, hardware, mfu_value=1.0)  # compute time at the whole peak
    comm_s = min(ideal.comm_time_s, (1 - MIN_COMPUTE_SHARE) * step_s)
    compute_s = step_s if run_cfg.zero.overlap_comm else step_s - comm_s
    storage = None
    if summary.get("checkpoint_write_s") and summary.get("checkpoint_bytes"):
        machines = len(set(summary.get("node_id_per_rank") or [None]))
        storage = summary["checkpoint_bytes"] / machines / summary["checkpoint_write_s"] / GB
    return Calibration(run_dir=str(run_dir), device=summary.get("device", "cpu"), step_time_s=step_s,
                       mfu=summary["mfu"], compute_mfu=ideal.compute_time_s / compute_s, peak_flops_per_device=peak,
                       storage_write_gbps=storage)
