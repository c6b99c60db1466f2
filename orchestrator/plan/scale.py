"""The plan at scale: step time, communication, checkpoint cost, failures and goodput. Pure arithmetic.

With Ψ parameters, N data-parallel ranks, p bytes per element and A micro-batches per step:

- compute: model FLOPs per step (x the recomputation factor of activation checkpointing)
  / (N x peak x plan.assumed_mfu), or the utilization a run measured (calibrate.py).
- communication per rank per step, ring collectives moving (N-1)/N of their data through each rank,
  over the slowest link they cross (the network once the job spans machines, else NVLink):
  stages 0-1 all-reduce the gradients once (2Ψ, the ZeRO paper's data-parallel volume); stage 2
  reduce-scatters them at every micro-batch and all-gathers the parameters once ((A+1)Ψ); stage 3
  all-gathers the parameters for the forward and the backward and reduce-scatters the gradients at
  every micro-batch (3AΨ). With A = 1: 2Ψ and 3Ψ, as in the paper. Latency is left out.
  The step takes compute + communication, or the larger of the two with zero.overlap_comm.
- checkpoint: what DeepSpeed writes (checkpoint_bytes: 14Ψ in bf16 at stages 0-2, 12Ψ at stage 3), and
  the time the busiest machine takes to write it, or to read what its ranks load, at the storage bandwidth.
- failures: a job on D devices is interrupted every device MTBF / D hours (M). Checkpointing every
  τ seconds of work, at C seconds a checkpoint, a failure costs the restart R (plus loading) and half
  an interval of lost work on average, so the wall time W of T seconds of work satisfies
  W = T (1 + C/τ) + (W/M) (R + (τ + C)/2), and goodput = T / W = (1 - (R + (τ + C)/2) / M) / (1 + C/τ).
  Young (1974) and Daly (2006): the τ that maximises it is about √(2 C M).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from orchestrator.config.schema import Config, Offload, Precision
from orchestrator.paths import human_bytes as _bytes
from orchestrator.plan import mfu
from orchestrator.plan.hardware import Hardware, hardware_for
from orchestrator.plan.memory import GB, model_states
from orchestrator.plan.plan import Plan, with_model_shapes

HOUR = 3600.0
INTERVAL_TOLERANCE = 2.0
"""A configured checkpoint interval more than this factor off the optimum gets a warning."""


def comm_volume_psi(stage: int, grad_accum: int) -> float:
    """Elements each rank's collectives carry per optimizer step, in units of Ψ (before the (N-1)/N factor)."""
    if stage == 3:
        return 3.0 * grad_accum
    if stage == 2:
        return grad_accum + 1.0
    return 2.0


def comm_bytes_per_rank(params: int, world: int, stage: int, grad_accum: int, bytes_per_element: int) -> float:
    """Bytes each rank sends (and receives) per optimizer step in ring collectives."""
    if world <= 1:
        return 0.0
    return comm_volume_psi(stage, grad_accum) * params * bytes_per_element * (world - 1) / world


@dataclass(frozen=True)
class CheckpointBytes:
    """What DeepSpeed writes for one checkpoint, per rank: rank 0 also writes the module's parameters at
    stages 0-2 (stage 0: the whole optimizer too); the other ranks their optimizer partitions."""

    rank0: float
    other_rank: float
    world: int
    read_per_rank: float
    """What each rank loads on resume: the module's parameters (stages 0-2, every rank) and its own shard."""

    @property
    def total(self) -> float:
        return self.rank0 + (self.world - 1) * self.other_rank


def checkpoint_bytes(params: int, world: int, stage: int, precision: str) -> CheckpointBytes:
    """What DeepSpeed 0.19 saves, measured (docs/planning.md): each rank's optimizer states
    (memory.py: fp32 master, Adam m and v, 12Ψ in all; 8Ψ for fp32 at stage 0, which keeps no master) and,
    at stages 0-2, the module's parameters in the training precision (pΨ), written by rank 0. Stage 3
    saves no separate parameters: its fp32 partitions are the parameters. Gradients are never saved."""
    states = model_states(params, world, stage, Precision(precision), Offload.none, Offload.none)
    optimizer = states["optimizer"]
    if stage == 3:
        return CheckpointBytes(rank0=optimizer, other_rank=optimizer, world=world, read_per_rank=optimizer)
    weights = states["params"]
    other = 0 if stage == 0 else optimizer
    return CheckpointBytes(rank0=weights + optimizer, other_rank=other, world=world, read_per_rank=weights + optimizer)


def young_daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Seconds of work between checkpoints that maximise goodput: √(2 C M)."""
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)


@dataclass(frozen=True)
class Goodput:
    """Shares of the wall time: useful work, writing checkpoints, and lost to failures (restart + rework)."""

    goodput: float
    checkpointing: float
    failures: float


def goodput(interval_s: float, checkpoint_s: float, restart_s: float, mtbf_s: float) -> Goodput:
    """The module docstring's first-order model; goodput 0 when failures come faster than work is saved."""
    failures = (restart_s + (interval_s + checkpoint_s) / 2.0) / mtbf_s
    if failures >= 1.0:
        return Goodput(goodput=0.0, checkpointing=0.0, failures=1.0)
    useful = (1.0 - failures) / (1.0 + checkpoint_s / interval_s)
    return Goodput(goodput=useful, checkpointing=useful * checkpoint_s / interval_s, failures=failures)


@dataclass(frozen=True)
class Scale:
    hardware: dict
    params: int
    nodes: int
    devices: int
    peak_flops_per_device: float
    mfu: float
    mfu_source: str
    flops_per_step: float
    compute_time_s: float
    comm_volume_psi: float
    comm_bytes_per_rank_per_step: float
    comm_link: str
    comm_bandwidth_gbps: float
    comm_time_s: float
    step_time_serial_s: float
    step_time_overlapped_s: float
    overlap_comm: bool
    step_time_s: float
    bound_by: str
    checkpoint_bytes_total: float
    checkpoint_bytes_per_param: float
    model_states_bytes_total: float
    """One copy of the model states in memory (16Ψ for mixed-precision Adam): more than a checkpoint, which
    holds no gradients (and at stage 3 no 16-bit parameters)."""
    checkpoint_bytes_rank0: float
    checkpoint_bytes_per_rank: float
    checkpoint_write_s: float
    checkpoint_load_s: float
    device_mtbf_hours: float
    job_mtbf_hours: float
    restart_s: float
    ckpt_every_steps: int
    ckpt_interval_s: float
    optimal_ckpt_interval_s: float
    optimal_ckpt_interval_steps: int
    goodput: float
    checkpointing_share: float
    failure_share: float
    goodput_at_optimum: float
    checkpointing_share_at_optimum: float
    failure_share_at_optimum: float
    steps: int
    work_hours: float
    wall_hours: float | None
    expected_interruptions: float | None
    device_hours: float | None
    cost: float | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One block: step, communication, checkpoint, failures, checkpoint interval, run time and cost."""
        h = self.hardware
        per_node = self.devices // self.nodes
        mode = "overlapped (zero.overlap_comm=true)" if self.overlap_comm else "in series (zero.overlap_comm=false)"
        lines = [
            f"at scale: {h['name']}, {self.nodes:,} machine{'s' if self.nodes > 1 else ''} x {per_node} = "
            f"{self.devices:,} devices ({self.peak_flops_per_device / 1e12:,.4g} TFLOP/s peak; "
            f"{h['intra_node_gbps']:g} GB/s within a machine, {h['inter_node_gbps']:g} GB/s network per device)",
            f"  step           {_s(self.step_time_s)}, {self.bound_by}-bound, {mode}: compute "
            f"{_s(self.compute_time_s)} (MFU {self.mfu:.3f} {self.mfu_source}), communication "
            f"{_s(self.comm_time_s)}; overlapped {_s(self.step_time_overlapped_s)}, in series "
            f"{_s(self.step_time_serial_s)}",
            f"  communication  {self.comm_volume_psi:g}Ψ per rank per step = "
            f"{_bytes(self.comm_bytes_per_rank_per_step)} {self.comm_link} at {self.comm_bandwidth_gbps:g} GB/s",
            f"  checkpoint     {_bytes(self.checkpoint_bytes_total)} in all "
            f"({self.checkpoint_bytes_per_param:.3g} bytes per parameter, as DeepSpeed writes it), "
            f"{_bytes(self.checkpoint_bytes_per_rank)} per rank ({_bytes(self.checkpoint_bytes_rank0)} on rank 0): "
            f"written in {_s(self.checkpoint_write_s)} at {h['storage_write_gbps']:.3g} GB/s per machine, "
            f"loaded in {_s(self.checkpoint_load_s)}",
        ]
        if self.checkpoint_bytes_total < self.model_states_bytes_total:
            lines.append(f"                 less than the {_bytes(self.model_states_bytes_total)} of model states in "
                         f"memory ({self.model_states_bytes_total / self.params:.3g} bytes per parameter): a "
                         "checkpoint holds no gradients")
        lines += [
            f"  failures       job MTBF {_h(self.job_mtbf_hours)} (device MTBF {self.device_mtbf_hours:,.0f} h / "
            f"{self.devices:,} devices); a restart costs {_s(self.restart_s)} with the load",
            f"  checkpointing  every {self.ckpt_every_steps:,} steps ({_s(self.ckpt_interval_s)}): goodput "
            f"{self.goodput:.3f} ({self.checkpointing_share:.1%} writing, {self.failure_share:.1%} lost to failures)",
            f"                 optimal every {self.optimal_ckpt_interval_steps:,} steps ("
            f"{_s(self.optimal_ckpt_interval_s)} = √(2 x write x MTBF)): goodput {self.goodput_at_optimum:.3f} "
            f"({self.checkpointing_share_at_optimum:.1%} writing, "
            f"{self.failure_share_at_optimum:.1%} lost to failures)",
        ]
        work = f"{self.steps:,} steps = {_s(self.work_hours * HOUR)} of work"
        if self.wall_hours is None:
            lines.append(f"  run            {work}; never finishes at this checkpoint interval")
        else:
            cost = f", cost {_count(self.cost)}" if self.cost is not None else ""
            lines.append(f"  run            {work}; {_s(self.wall_hours * HOUR)} expected with "
                         f"{self.expected_interruptions:,.3g} interruptions; {_count(self.device_hours)} "
                         f"device-hours{cost}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _s(seconds: float) -> str:
    if seconds >= 2 * HOUR:
        return f"{seconds / HOUR:.3g} h"
    if seconds >= 120:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def _h(hours: float) -> str:
    return f"{hours:,.0f} h" if hours >= 100 else f"{hours:.3g} h"


def _count(value: float) -> str:
    """Device-hours and cost: exact while small, three figures once large (71,650 -> 71.7k)."""
    if value >= 1e6:
        return f"{value / 1e6:.3g} M"
    return f"{value / 1e3:.3g}k" if value >= 1e4 else f"{value:,.0f}"


def estimate(cfg: Config, plan: Plan, hardware: Hardware | None = None, mfu_value: float | None = None,
             mfu_source: str = "assumed (plan.assumed_mfu)") -> Scale:
    """The scale figures of `plan` on `hardware` (default: the cluster's), at `mfu_value` (default: assumed)."""
    hardware = hardware or hardware_for(cfg.cluster, plan.uses_gpus)
    utilization = mfu_value if mfu_value is not None else cfg.plan.assumed_mfu
    world, params = plan.world_size, plan.params
    nodes = math.ceil(world / plan.ranks_per_node)
    peak = hardware.peak_flops(plan.precision)
    layers = with_model_shapes(cfg).model.num_layers
    recompute = mfu.hfu_factor(mfu.checkpointed_layers(plan.activation_checkpointing,
                                                       cfg.train.activation_checkpointing_every, layers), layers)
    flops_per_step = float(plan.flops_per_token * plan.tokens_per_step)
    compute_s = flops_per_step * recompute / (world * peak * utilization)

    bytes_per_element = 4 if plan.precision == "fp32" else 2
    comm_bytes = comm_bytes_per_rank(params, world, plan.zero_stage, plan.grad_accum, bytes_per_element)
    link, bandwidth = (("over the network", hardware.inter_node_gbps) if nodes > 1 else ("within a machine",
                                                                               hardware.intra_node_gbps))
    comm_s = comm_bytes / (bandwidth * GB)
    serial, overlapped = compute_s + comm_s, max(compute_s, comm_s)
    step_s = overlapped if cfg.zero.overlap_comm else serial

    ck = checkpoint_bytes(params, world, plan.zero_stage, plan.precision)
    busiest_write = ck.rank0 + (min(plan.ranks_per_node, world) - 1) * ck.other_rank
    write_s = busiest_write / (hardware.storage_write_gbps * GB)
    load_s = min(plan.ranks_per_node, world) * ck.read_per_rank / (hardware.storage_read_gbps * GB)

    job_mtbf_s = hardware.device_mtbf_hours * HOUR / world
    restart_s = hardware.restart_s + load_s
    work_s = plan.max_steps * step_s
    every = cfg.train.ckpt_every if 0 < cfg.train.ckpt_every < plan.max_steps else plan.max_steps
    interval_s = every * step_s
    optimal_s = young_daly_interval_s(write_s, job_mtbf_s)
    optimal_steps = max(1, round(optimal_s / step_s))
    target = min(optimal_steps, plan.max_steps)  # past the run's length, the best is to save only at the end
    configured = goodput(interval_s, write_s, restart_s, job_mtbf_s)
    best = goodput(target * step_s, write_s, restart_s, job_mtbf_s)
    wall_s = work_s / configured.goodput if configured.goodput > 0 else None

    warnings = []
    if hardware.note:
        warnings.append(f"hardware {hardware.name} {hardware.note}")
    if configured.goodput == 0:
        warnings.append(f"train.ckpt_every={every}: a failure comes every {job_mtbf_s / HOUR:.2f} h on average, "
                        f"sooner than {every} steps ({interval_s / HOUR:.2f} h) of work plus a restart: the run "
                        f"would never finish; checkpoint every {optimal_steps} steps")
    elif not 1 / INTERVAL_TOLERANCE <= every / target <= INTERVAL_TOLERANCE:
        warnings.append(f"train.ckpt_every={every} is {every / target:.2g}x the optimal interval of "
                        f"{target} steps for a job MTBF of {job_mtbf_s / HOUR:.3g} h: goodput "
                        f"{configured.goodput:.3f}, {best.goodput:.3f} with train.ckpt_every={target}")
    device_hours = wall_s * world / HOUR if wall_s is not None else None
    return Scale(
        hardware=hardware.to_dict(), params=params, nodes=nodes, devices=world, peak_flops_per_device=peak,
        mfu=utilization, mfu_source=mfu_source, flops_per_step=flops_per_step, compute_time_s=compute_s,
        comm_volume_psi=comm_volume_psi(plan.zero_stage, plan.grad_accum) if world > 1 else 0.0,
        comm_bytes_per_rank_per_step=comm_bytes, comm_link=link, comm_bandwidth_gbps=bandwidth, comm_time_s=comm_s,
        step_time_serial_s=serial, step_time_overlapped_s=overlapped, overlap_comm=cfg.zero.overlap_comm,
        step_time_s=step_s, bound_by="communication" if comm_s > compute_s else "compute",
        checkpoint_bytes_total=ck.total, checkpoint_bytes_per_param=ck.total / params,
        model_states_bytes_total=sum(model_states(params, 1, 0, Precision(plan.precision), Offload.none,
                                                  Offload.none).values()),
        checkpoint_bytes_rank0=ck.rank0,
        checkpoint_bytes_per_rank=ck.other_rank if world > 1 else ck.rank0, checkpoint_write_s=write_s,
        checkpoint_load_s=load_s, device_mtbf_hours=hardware.device_mtbf_hours, job_mtbf_hours=job_mtbf_s / HOUR,
        restart_s=restart_s, ckpt_every_steps=every, ckpt_interval_s=interval_s, optimal_ckpt_interval_s=optimal_s,
        optimal_ckpt_interval_steps=optimal_steps, goodput=configured.goodput,
        checkpointing_share=configured.checkpointing, failure_share=configured.failures,
        goodput_at_optimum=best.goodput, checkpointing_share_at_optimum=best.checkpointing,
        failure_share_at_optimum=best.failures, steps=plan.max_steps, work_hours=work_s / HOUR,
        wall_hours=wall_s / HOUR if wall_s is not None else None,
        expected_interruptions=wall_s / job_mtbf_s if wall_s is not None else None,
        device_hours=device_hours,
        cost=device_hours * hardware.device_hour_cost if device_hours is not None and hardware.device_hour_cost
        is not None else None,
        warnings=warnings,
    )

