"""What one rank builds before its first step, in the order the start-up breakdown reports it: seed, data,
the task's model, the loop's hooks, the DeepSpeed engine, the resume point, the throughput meter and, on
rank 0, the tracker. `Worker` holds it for the loop (train/loop.py), with what the rank measures since.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.rundir import Event, RunDir
from orchestrator.train.payload import WorkerPayload


@dataclass
class Worker:
    """What one rank built before its first step (`_setup`), and what it has measured since."""

    cfg: Any
    payload: WorkerPayload
    run: RunDir
    rank: int
    world: int
    device_type: str
    task: Any
    hooks: Any
    data: Any
    val_blocks: Any
    batches: Any
    engine: Any
    writer: Any
    meter: Any
    progress: Any
    start: Any
    n_params: int
    peak_flops_source: str
    load_memory_bytes: int | None
    """The peak memory building (or loading) the model added on this rank (train/memory_probe.py); None where
    the platform cannot tell."""
    tracker: Any = None
    measured: dict | None = None
    """Model-state bytes this rank held at the probe step (train/memory_probe.py)."""

    def evaluate(self, step: int) -> dict[str, float]:
        """The task's validation metrics over every rank's fixed batches (a collective)."""
        t = self.cfg.train
        batches = self.task.validation_batches(self.val_blocks, t.micro_batch_size, self.rank, self.world,
                                               t.eval_batches)
        self.engine.eval()
        metrics = self.task.evaluate(self.engine, _marked(batches, self.progress, step))
        self.engine.train()
        return metrics


def setup(payload: WorkerPayload, progress) -> Worker:
    """Seed, data, model, hooks, engine and resume, in the order the start-up breakdown reports them."""
    from orchestrator.train.engine import use_cpu_accelerator_unless_cuda

    device_type = use_cpu_accelerator_unless_cuda()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.distributed's renamed collectives

    import numpy as np
    import ray.train
    import torch

    from orchestrator import tasks
    from orchestrator.config.compose import from_dict
    from orchestrator.models.registry import apply_activation_checkpointing, import_model_code
    from orchestrator.train import engine as ds
    from orchestrator.train.checkpoint_writer import CheckpointWriter
    from orchestrator.train.hooks import Hooks
    from orchestrator.train.memory_probe import LoadMemory

    startup = payload.startup
    cfg = from_dict(payload.config)
    ds.import_libraries()
    import_model_code(cfg.model)
    startup.mark("imports")
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)  # same seed on every rank: identical initial weights

    # --- data: the driver already prepared the cache; this only loads it ---
    task = tasks.for_config(cfg)
    data = task.prepare_data(cfg)
    val_blocks = data.blocks("val")
    batches = data.batches(t.micro_batch_size, rank, world, t.seed)
    startup.mark("data")
    progress.mark(0, "setup")

    # --- model, hooks and engine ---
    hooks = Hooks([make(cfg) for make in payload.hooks])
    pretrained = cfg.model.pretrained_path is not None or cfg.distill.teacher_path is not None
    sharded = ds.sharded_loading(payload.deepspeed, pretrained)
    with LoadMemory(device_type) as load:
        model = task.build_model(cfg, data.meta)
        load.page_in(model)
    n_params = ds.parameter_count(model)
    apply_activation_checkpointing(model, t.activation_checkpointing, t.activation_checkpointing_every)
    hooks.before_engine(model)
    startup.mark("model")
    progress.mark(0, "setup")
    run = RunDir(Path(payload.run_dir))
    start, skipped = _resume_point(rank, run, payload.resume_from)
    engine = _engine(cfg, payload.deepspeed, model, start, world)
    del sharded  # the engine holds the partitioned model now
    startup.mark("engine")
    progress.mark(0, "setup")
    if start is not None:
        _restore(engine, batches, start, rank, world, t.grad_accum)
        startup.mark("resume")

    peak_flops, source = _peak_flops(rank, device_type, payload.plan.precision, cfg.cluster.cpus_per_worker,
                                     Path(cfg.data.cache_dir))
    w = Worker(cfg=cfg, payload=payload, run=run, rank=rank, world=world, device_type=device_type, task=task,
               hooks=hooks, data=data, val_blocks=val_blocks, batches=batches, engine=engine,
               writer=CheckpointWriter(engine, run.checkpoints, rank, world, t.keep_checkpoints, progress),
               meter=_meter(cfg, payload.plan, model, peak_flops, world), progress=progress, start=start,
               n_params=n_params, peak_flops_source=source, load_memory_bytes=load.bytes)
    if rank == 0:
        w.tracker = _open_run(w, skipped)
    return w


def _engine(cfg, ds_config: dict, model, start, world: int):
    """deepspeed.initialize with the run's LR schedule; a checkpoint of another world size loads as universal."""
    from orchestrator.train import elastic
    from orchestrator.train import engine as ds
    from orchestrator.train.schedule import lr_factor

    t = cfg.train
    if start is not None and elastic.needs_universal(start, world):
        ds_config = {**ds_config, "checkpoint": {"load_universal": True}}
    engine = ds.initialize(model, ds_config,
                           lambda s: lr_factor(s, cfg.optim.warmup_steps, t.max_steps, cfg.optim.min_lr_ratio),
                           cfg.optim.weight_decay)
    engine.train()  # from_pretrained hands a model over in eval mode: dropout would stay off until the first eval
    if t.compile:
        engine.compile()  # compiles lazily, during the first step
    return engine


def _restore(engine, batches, start, rank: int, world: int, grad_accum: int) -> None:
    """Model, optimizer and schedule from the checkpoint; this rank's RNG streams and data position."""
    from orchestrator.train import elastic, rank_state
    from orchestrator.train import engine as ds

    ds.load_checkpoint(engine, *elastic.deepspeed_location(start, world))
    source = elastic.rank_state_source(start, rank)
    if source is not None:
        batches.restore(rank_state.restore(source))
    else:  # a universal checkpoint converted by hand records no data position: derive it from the step
        batches.restore(batches.position_after(start.step * grad_accum))


def _meter(cfg, plan, model, peak_flops: float, world: int):
    from orchestrator.plan import mfu
    from orchestrator.train.throughput import Throughput

    t = cfg.train
    layers = model.config.num_hidden_layers
    hfu_factor = mfu.hfu_factor(mfu.checkpointed_layers(t.activation_checkpointing.value,
                                                        t.activation_checkpointing_every, layers), layers)
    return Throughput(plan.tokens_per_step, plan.flops_per_token, peak_flops, world, hfu_factor)


def _open_run(w: Worker, skipped: list) -> Any:
    """Rank 0, before the first step: say where the run starts, cut metrics.jsonl back to it, record the
    start or resume, and open the tracker."""
    from orchestrator.track.tracker import Tracker

    for path, reason in skipped:
        print(f"warning: skipping checkpoint {path}: {reason}", flush=True)
    done = w.start.step if w.start else 0
    w.run.truncate_metrics(done)
    if w.start is not None:
        print(f"resuming from {w.start.path} (step {w.start.step})", flush=True)
    w.run.append_event(Event.resume if w.start else Event.start, done)
    tracker = Tracker(w.run.path, w.cfg.logger, w.payload.run_id, w.run.path.name, w.payload.config)
    print(f"plan: {w.payload.plan.describe()}", flush=True)
    return tracker


def _marked(batches, progress, step: int):
    """The evaluation's batches, each marked as progress first (and once more after the last)."""
    for batch in batches:
        progress.mark(step, "eval")
        yield batch
    progress.mark(step, "eval")


def _resume_point(rank: int, run: RunDir, named):
    """Rank 0 picks the checkpoint every rank loads: this run's newest complete one, its hashes checked
    unless the driver checked that very one moments ago, else the one the driver named."""
    import torch.distributed as dist

    from orchestrator.rundir import checkpoints

    chosen = [None, []]
    if rank == 0:
        start, skipped = checkpoints.newest_usable(run.checkpoints, trusted=named.path if named else None)
        chosen = [start or named, skipped]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0], chosen[1]


def _peak_flops(rank: int, device_type: str, precision: str, threads: int, cache_dir: Path) -> tuple[float, str]:
    """Rank 0 looks one device's peak up (or probes it, once per machine, while the others wait); all get it."""
    import torch.distributed as dist

    from orchestrator.train import peak_flops

    found = [peak_flops.peak_flops(device_type, precision, threads, cache_dir) if rank == 0 else None]
    dist.broadcast_object_list(found, src=0)
    return found[0]
