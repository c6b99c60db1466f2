"""`orchestrator plan`: print the plan (world size, batch, memory per rank, FLOPs, the at-scale figures)
and the DeepSpeed config it renders, as text or JSON, without starting anything."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from orchestrator.config.schema import Config, PlanFormat
from orchestrator.errors import ConfigError
from orchestrator.paths import free_bytes, human_bytes
from orchestrator.plan.calibrate import Calibration, calibrate
from orchestrator.plan.deepspeed import deepspeed_config
from orchestrator.plan.hardware import hardware_for
from orchestrator.plan.plan import Plan, make_plan, resolved_config
from orchestrator.plan.scale import Scale, estimate


def run(cfg: Config, calibrate_from: str | None) -> int:
    plan = make_plan(cfg)
    ds = deepspeed_config(resolved_config(cfg, plan), plan)
    calibration = _calibration(plan, calibrate_from) if calibrate_from is not None else None
    scale = _scale(cfg, plan, calibration, calibrate_from)
    if cfg.plan.format is PlanFormat.json:
        scale_dict = scale.to_dict() if scale else None
        if scale_dict and calibration:
            scale_dict["calibration"] = dataclasses.asdict(calibration)
        print(json.dumps({"plan": {**plan.to_dict(), "scale": scale_dict}, "deepspeed": ds}, indent=2))
        return 0
    print(plan.describe())
    if plan.flops_per_token:
        print(f"flops/token={plan.flops_per_token:,}  flops/step={plan.flops_per_token * plan.tokens_per_step:,}")
    print(plan.memory_table())
    for reason in plan.auto_reasons:
        print(f"zero=auto: {reason}")
    if calibration:
        print(calibration.describe())
    if scale:
        print(scale.describe())
    print("deepspeed config:")
    print(json.dumps(ds, indent=2))
    return 0


def _calibration(plan: Plan, run_dir: str) -> Calibration:
    """A finished run's measurements, refused when it ran on another kind of machine than the plan's."""
    calibration = calibrate(Path(run_dir))
    if (calibration.device == "cuda") != plan.uses_gpus:
        raise ConfigError([f"--calibrate {run_dir}: the run trained on {calibration.device}, the plan is "
                           f"for {'GPUs' if plan.uses_gpus else 'CPU workers'}: calibrate from a run on the "
                           "same kind of machine"])
    return calibration


def _scale(cfg: Config, plan: Plan, calibration: Calibration | None, calibrate_from: str | None) -> Scale:
    hardware = hardware_for(cfg.cluster, plan.uses_gpus)
    if calibration is None:
        scale = estimate(cfg, plan, hardware)
    else:
        scale = estimate(cfg, plan, calibration.apply(hardware, plan.precision), calibration.compute_mfu,
                         f"calibrated from {calibrate_from}")
    short = _disk_short(cfg, scale)
    return dataclasses.replace(scale, warnings=[*scale.warnings, short]) if short else scale


def _disk_short(cfg: Config, scale: Scale) -> str | None:
    """The run directory's filesystem, here, against the most the run keeps on it at once: train.keep_checkpoints
    checkpoints and the one being written (the newest are deleted only once it is sealed)."""
    run_dir = Path(cfg.run_dir or "runs").expanduser()
    every = scale.ckpt_every_steps
    written = -(-scale.steps // every)  # the last step is always saved
    held = min(cfg.train.keep_checkpoints + 1, written)
    need, free = held * scale.checkpoint_bytes_total, free_bytes(run_dir)
    if free >= need:
        return None
    return (f"run_dir {run_dir}: {human_bytes(free)} free on its filesystem, less than the {human_bytes(need)} "
            f"of {held} checkpoints of {human_bytes(scale.checkpoint_bytes_total)} this run holds at once "
            f"(train.keep_checkpoints={cfg.train.keep_checkpoints} and the one being written); a checkpoint that "
            "finds no room ends the run, the earlier ones stay usable: lower train.keep_checkpoints or make room")
