"""The per-worker training loop, run by every Ray Train worker. Read it top to bottom.

Contract: every rank builds the same model from the same seed, reads its own shard of the
packed data, and steps a DeepSpeed engine; losses are averaged over ranks before logging.
Rank 0 alone writes metrics.jsonl, events.jsonl, the W&B run, summary.json and the Hugging
Face model; every rank writes its checkpoint shard. Collectives (all_reduce, barriers, ZeRO-3
gathers) are called by all ranks in the same order, so no rank waits on a branch another
rank skipped.

Resume: on every start (the first, a rerun, or Ray Train's restart after a worker failure)
the loop continues from the newest complete checkpoint in <run_dir>/checkpoints, or from the
checkpoint the driver names; metrics.jsonl is cut back to that step so every step appears once.
Stop: a stop request (the driver's STOP file, or SIGTERM/SIGUSR1 in a worker) is shared with
all ranks through the all-reduce that also averages the loss, on logging steps and every
STOP_CHECK_EVERY steps; they checkpoint that step and return.
Lean step: the loss stays on the device; the host waits on the accelerator only at those
all-reduces, so a GPU runs ahead of Python on every other step.
Start-up and throughput: rank 0 prints where the time to the first step went (train/startup.py)
and logs tokens/s, MFU and HFU (mfu.py) on every logging step.
Progress: every rank marks where it is (`progress.mark(step, phase)`) before each piece of work
that can block on another rank; the driver's watchdog (train/watchdog.py) ends a rank whose
marks stop for train.collective_timeout_s.
"""

from __future__ import annotations

import gc
import json
import random
import resource
import sys
import time
import warnings
from pathlib import Path

STOP_FILE = "STOP"
STOP_CHECK_EVERY = 10
"""Steps between the all-reduces that share stop requests when no logging step comes sooner: a stop
waits at most this many steps, and other steps need no host sync at all."""
EARLY_STOP = "early_stopped"
"""STOP file content that ends the run as finished early (a sweep's scheduler), not preempted."""


def train_worker(payload: dict) -> None:
    """Entry point handed to TorchTrainer; payload = {config, plan, ds_config, run_dir, run_id, resume_from,
    progress_board}. The rank reports its progress to the driver's watchdog until it returns."""
    from orchestrator.train.startup import WORKER_GROUP, Startup

    startup = Startup.from_payload(payload["startup"])
    startup.mark(WORKER_GROUP)
    import ray
    import ray.train

    from orchestrator.train.watchdog import Progress

    progress = Progress(ray.get_actor(payload["progress_board"]), ray.train.get_context().get_world_rank(),
                        ray.get_runtime_context().get_node_id())
    try:
        _train(payload, progress, startup)
    finally:
        progress.close()


def _train(payload: dict, progress, startup) -> None:
    from orchestrator.train.engine import use_cpu_accelerator_unless_cuda

    device_type = use_cpu_accelerator_unless_cuda()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.distributed's renamed collectives

    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist

    from orchestrator.compress.hooks import TrainingHooks
    from orchestrator.config.compose import from_dict
    from orchestrator.data.loader import eval_batches
    from orchestrator.data.pipeline import prepare
    from orchestrator.models.registry import apply_activation_checkpointing, build_model
    from orchestrator.plan import mfu
    from orchestrator.launch import worker_signals as signals
    from orchestrator.train import elastic, rank_state
    from orchestrator.train import engine as ds
    from orchestrator.train.checkpoint_writer import CheckpointWriter
    from orchestrator.train.memory_probe import model_state_bytes
    from orchestrator.train.schedule import lr_factor

    ds.import_libraries()
    startup.mark("imports")
    cfg = from_dict(payload["config"])
    plan = payload["plan"]
    run_dir = Path(payload["run_dir"])
    ckpt_root = run_dir / "checkpoints"
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)  # same seed on every rank: identical initial weights

    # --- data: the driver already prepared the cache; this only loads it ---
    data = prepare(cfg.data, t.seq_len, t.seed)
    meta = data.meta
    val_blocks = data.blocks("val")
    batches = data.batches(t.micro_batch_size, rank, world, t.seed)
    startup.mark("data")
    progress.mark(0, "setup")

    # --- model and engine ---
    model = build_model(cfg.model, meta["vocab_size"], t.seq_len, meta["eos_token_id"])
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
    apply_activation_checkpointing(model, t.activation_checkpointing, t.activation_checkpointing_every)
    compression = TrainingHooks(cfg)  # training-time compression passes (compress=...); no-ops for none
    compression.before_engine(model)
    startup.mark("model")
    progress.mark(0, "setup")
    # --- resume: newest complete checkpoint of this run (rank 0 checks its hashes), else the driver's ---
    start, skipped = _resume_point(rank, ckpt_root, payload.get("resume_from"))
    ds_config = payload["ds_config"]
    if start is not None and elastic.needs_universal(start, world):
        ds_config = {**ds_config, "checkpoint": {"load_universal": True}}
    engine = ds.initialize(
        model,
        ds_config,
        lambda s: lr_factor(s, cfg.optim.warmup_steps, t.max_steps, cfg.optim.min_lr_ratio),
        cfg.optim.weight_decay,
    )
    if t.compile:
        engine.compile()  # compiles lazily, during the first step
    device = engine.device
    tokens_per_step = plan["tokens_per_step"]
    startup.mark("engine")
    progress.mark(0, "setup")
    if start is not None:
        ds.load_checkpoint(engine, *elastic.deepspeed_location(start, world))
        source = elastic.rank_state_source(start, rank)
        if source is not None:
            batches.restore(rank_state.restore(source))
        else:  # a universal checkpoint converted by hand records no data position: derive it from the step
            batches.restore(batches.position_after(start.step * t.grad_accum))
        startup.mark("resume")
    first_step = start.step + 1 if start else 1
    peak_flops, peak_flops_source = _peak_flops(rank, device_type, plan["precision"], cfg.cluster.cpus_per_worker,
                                    Path(cfg.data.cache_dir))
    flops_per_token = plan["flops_per_token"] or 6 * n_params  # a pretrained model: 6N, its shapes unknown
    layers = model.config.num_hidden_layers
    hfu_factor = mfu.hfu_factor(mfu.checkpointed_layers(t.activation_checkpointing.value,
                                                        t.activation_checkpointing_every, layers), layers)

    def sync(loss, stop: bool, finish: bool, hashed: bool) -> tuple[float, bool, bool, bool]:
        """One all-reduce carries the loss (a device tensor until now), every rank's stop and finish-early
        requests, and whether its share of the last checkpoint is hashed; the one host sync of a step, and
        only on steps that log or may stop. Returns (mean loss, stop, finish early, every rank hashed)."""
        flags = torch.tensor([float(stop), float(finish), float(hashed)], dtype=torch.float64, device=device)
        tensor = torch.cat([loss.detach().to(torch.float64).reshape(1), flags])
        dist.all_reduce(tensor)
        values = tensor.tolist()
        return values[0] / world, values[1] > 0, values[2] > 0, values[3] == world

    def evaluate(step: int) -> float:
        engine.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, batches
        with torch.no_grad():
            for batch in eval_batches(val_blocks, t.micro_batch_size, rank, world, t.eval_batches):
                progress.mark(step, "eval")
                batch = batch.to(device)
                total += torch.tensor([engine(input_ids=batch, labels=batch).loss.item(), 1.0],
                                      dtype=torch.float64, device=device)
        progress.mark(step, "eval")
        dist.all_reduce(total)
        engine.train()
        return (total[0] / total[1]).item()

    writer = CheckpointWriter(engine, ckpt_root, rank, world, t.keep_checkpoints, progress)

    tracker = None
    if rank == 0:
        from orchestrator.track.tracker import Tracker, truncate_metrics

        for path, reason in skipped:
            print(f"warning: skipping checkpoint {path}: {reason}", flush=True)
        truncate_metrics(run_dir / "metrics.jsonl", first_step - 1)
        if start is not None:
            print(f"resuming from {start.path} (step {start.step})", flush=True)
        _event(run_dir, "resume" if start else "start", first_step - 1)
        tracker = Tracker(run_dir, cfg.logger, payload["run_id"], run_dir.name, payload["config"])
        print(f"plan: {payload['plan_text']}", flush=True)

    # --- the loop ---
    # Everything built so far (Ray, DeepSpeed, transformers, W&B: millions of objects) lives until the end;
    # frozen, Python's garbage collector stops walking it again and again during the steps.
    gc.freeze()
    started = window_start = time.perf_counter()
    window_steps = 0
    probe_step, measured = min(first_step + 1, t.max_steps), {}
    last_loss = val_loss = float("nan")
    stopped_at = None
    window_rates = []  # tokens/s of every logged window: the summary's steady rate is their median
    for step in range(first_step, t.max_steps + 1):
        lr = engine.get_lr()[0]  # the rate this step uses (the scheduler moves on in engine.step)
        step_loss = torch.zeros((), device=device)
        for micro in range(t.grad_accum):
            progress.mark(step, "step")
            batch = batches.next()
            if device_type == "cuda":  # a pinned copy lets the transfer overlap the GPU's queued work
                batch = batch.pin_memory()
            batch = batch.to(device, non_blocking=True)
            loss = engine(input_ids=batch, labels=batch).loss
            engine.backward(loss)
            step_loss += loss.detach()
            if step == probe_step and micro == t.grad_accum - 1:
                # Parameters, gradients and optimizer states all exist now (states appear at the first step).
                measured = model_state_bytes(engine)
            engine.step()  # applies the optimizer only at the accumulation boundary
        compression.on_step_end(step, lambda params: ds.gathered(engine, params))
        window_steps += 1
        if step == first_step:
            _first_step_done(device_type, startup, rank, "compile" if t.compile else "first_step")

        is_last = step == t.max_steps
        evaluates = is_last or bool(t.eval_every and step % t.eval_every == 0)
        logs = is_last or step % t.log_every == 0
        if logs or evaluates or step % STOP_CHECK_EVERY == 0:
            request = _stop_request(run_dir) if rank == 0 else None
            progress.mark(step, "sync")
            last_loss, stop, finish_early, hashed = sync(step_loss / t.grad_accum,
                                                         signals.requested() or request not in (None, EARLY_STOP),
                                                         request == EARLY_STOP, writer.hashed())
            if hashed:
                writer.seal()  # the last checkpoint's hashes are all in: nothing waits
            is_last = is_last or finish_early
            logs = logs or stop or finish_early
            evaluates = evaluates or finish_early
        else:
            stop = False

        last_step = step
        record = {}
        if logs:
            now = time.perf_counter()
            tokens_per_s = window_steps * tokens_per_step / (now - window_start)
            window_rates.append(tokens_per_s)
            utilization = mfu.utilization(flops_per_token, tokens_per_s, peak_flops, world)
            record.update(
                loss=last_loss,
                lr=lr,
                tokens_per_s=tokens_per_s,
                mfu=utilization,
                hfu=utilization * hfu_factor,
                tokens=step * tokens_per_step,
                elapsed_s=now - started,
            )
            record.update(compression.metrics())
        paused = time.perf_counter()
        if evaluates:
            val_loss = evaluate(step)
            record.update(val_loss=val_loss, val_ppl=_perplexity(val_loss))
            if payload.get("report_metrics"):  # a sweep's scheduler judges the trial here (every rank reports)
                ray.train.report({"step": step, "loss": last_loss, "val_loss": val_loss,
                                  "val_ppl": _perplexity(val_loss)})
        if record and tracker is not None:
            tracker.log(step, record)
            if "loss" in record:
                _progress(step, t.max_steps, step - first_step + 1, record, time.perf_counter() - started)
        if is_last or stop or (t.ckpt_every and step % t.ckpt_every == 0):
            writer.save(step, batches.state(), {"step": step, "tokens": step * tokens_per_step, "world_size": world,
                                                "global_batch": plan["global_batch"], "data": batches.state(),
                                                "zero_stage": cfg.zero.stage, "wandb_run_id": payload["run_id"],
                                                "time": time.time()}, seal_now=is_last or stop)
        if logs:  # throughput counts training steps only, not the evaluation and checkpoint above
            window_start, window_steps = time.perf_counter(), 0
        else:
            window_start += time.perf_counter() - paused
        if stop and not is_last:
            stopped_at = step
            break
        if is_last:
            break

    if stopped_at is not None:
        if rank == 0:
            print(f"stop requested: checkpoint of step {stopped_at} written; rerun the same command to resume",
                  flush=True)
            _event(run_dir, "preempted", stopped_at)
            tracker.close()
        return

    wall_s = time.perf_counter() - started
    if first_step > t.max_steps:  # resumed from the final checkpoint: only the summary was missing
        last_step = t.max_steps
        val_loss = evaluate(t.max_steps)
        if rank == 0:
            rows = (run_dir / "metrics.jsonl").read_text().splitlines()
            last_loss = json.loads(rows[-1])["loss"] if rows else float("nan")

    # --- final model (Hugging Face format) and summary ---
    status = "completed" if last_step == t.max_steps else EARLY_STOP
    progress.mark(last_step, "finish")
    state = ds.full_state_dict(engine)
    peak, measured_all, nodes = [None] * world, [None] * world, [None] * world
    dist.all_gather_object(peak, _peak_memory_bytes(device_type))
    dist.all_gather_object(measured_all, measured)
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if rank == 0:
        from orchestrator.data.tokenizer import load_tokenizer

        model_dir = run_dir / "model"
        every_rank_val = [b for r in range(world) for b in eval_batches(val_blocks, t.micro_batch_size, r, world,
                                                                         t.eval_batches)]
        compressed = compression.export(engine.module, state, model_dir, every_rank_val, val_loss)
        progress.mark(last_step, "finish")
        load_tokenizer(str(data.tokenizer_dir)).save_pretrained(str(model_dir))
        summary = {
            "final_train_loss": last_loss,
            "final_val_loss": val_loss,
            "final_val_ppl": _perplexity(val_loss),
            "status": status,
            "steps": last_step,
            "tokens": last_step * tokens_per_step,
            "wall_s": wall_s,
            "resumed_from_step": start.step if start else None,
            "data_position": batches.state(),  # samples drawn, in all, and from each of data.sources
            "world_size": world,
            "node_id_per_rank": nodes,
            "device": device_type,
            "peak_memory_bytes_per_rank": peak,
            "measured_model_state_bytes_per_rank": measured_all,
            "predicted_model_state_bytes_per_rank": (plan["memory"] or {}).get("model_states"),
            "predicted_memory_bytes_per_rank": plan["memory"],
            "params": n_params,
            **_throughput(window_rates, tokens_per_step, flops_per_token, peak_flops, world, hfu_factor),
            **_checkpoint_cost(writer.sealed),
            "flops_per_token": flops_per_token,
            "peak_flops_per_device": peak_flops,
            "peak_flops_source": peak_flops_source,
            "startup": startup.breakdown(),
        }
        if compressed:
            summary["compress"] = {compressed["pipeline"]: {k: v for k, v in compressed.items()
                                                            if isinstance(v, (int, float))}}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        tracker.finish(summary)
        _event(run_dir, "finished" if status == "completed" else EARLY_STOP, last_step)
    progress.mark(last_step, "finish")
    dist.barrier()


def _resume_point(rank: int, ckpt_root: Path, named: dict | None):
    """Rank 0 picks the checkpoint every rank loads: this run's newest complete one, its hashes checked
    unless the driver checked that very one moments ago, else the one the driver named."""
    import torch.distributed as dist

    from orchestrator.rundir import checkpoints as checkpoint

    chosen = [None, []]
    if rank == 0:
        trusted = Path(named["path"]) if named else None
        start, skipped = checkpoint.newest_usable(ckpt_root, trusted=trusted)
        if start is None and named:
            start = checkpoint.Checkpoint(path=Path(named["path"]), step=named["step"],
                                          world_size=named["world_size"], meta=named["meta"])
        chosen = [start, skipped]
    dist.broadcast_object_list(chosen, src=0)
    return chosen[0], chosen[1]


def _first_step_done(device_type: str, startup, rank: int, phase: str) -> None:
    """Close the start-up timeline once the first optimizer step has really finished, and show it."""
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()
    startup.mark(phase)
    if rank == 0:
        print(startup.describe(), flush=True)


def _peak_flops(rank: int, device_type: str, precision: str, threads: int, cache_dir: Path) -> tuple[float, str]:
    """Rank 0 looks one device's peak up (or probes it, once per machine, while the others wait); all get it."""
    import torch.distributed as dist

    from orchestrator.train import peak_flops

    found = [peak_flops.peak_flops(device_type, precision, threads, cache_dir) if rank == 0 else None]
    dist.broadcast_object_list(found, src=0)
    return found[0]


def _throughput(window_rates: list[float], tokens_per_step: int, flops_per_token: float, peak_flops: float,
                world: int, hfu_factor: float) -> dict:
    """The run's steady tokens/s (median of the logged windows after the first, which holds the warm-up),
    the step time and the MFU and HFU it gives (what `orchestrator plan --calibrate` reads)."""
    import statistics

    from orchestrator.plan import mfu

    steady = window_rates[1:] or window_rates
    if not steady:
        return {}
    tokens_per_s = statistics.median(steady)
    utilization = mfu.utilization(flops_per_token, tokens_per_s, peak_flops, world)
    return {"tokens_per_s": tokens_per_s, "step_time_s": tokens_per_step / tokens_per_s, "mfu": utilization,
            "hfu": utilization * hfu_factor}


def _checkpoint_cost(sealed: list[tuple[float, int]]) -> dict:
    """Median seconds the checkpoints of this run blocked the steps, and the bytes of the last one."""
    import statistics

    if not sealed:
        return {}
    return {"checkpoint_write_s": statistics.median(s for s, _ in sealed), "checkpoint_bytes": sealed[-1][1]}


def _stop_request(run_dir: Path) -> str | None:
    """The STOP file's content (why the run should stop), or None when there is none."""
    try:
        return (run_dir / STOP_FILE).read_text().strip()
    except FileNotFoundError:
        return None


def _event(run_dir: Path, name: str, step: int) -> None:
    """events.jsonl: one line per start, resume, preemption and finish, so restarts are auditable."""
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"event": name, "step": step, "time": time.time()}) + "\n")


def _perplexity(loss: float) -> float:
    import math

    return math.exp(loss) if loss < 50 else float("inf")


def _peak_memory_bytes(device_type: str) -> int:
    """CUDA: peak allocated by torch. CPU: the process's peak resident set size."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _progress(step: int, max_steps: int, done: int, record: dict, elapsed: float) -> None:
    eta = elapsed / done * (max_steps - step)
    line = (
        f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%) | loss {record['loss']:.4f} | "
        f"lr {record['lr']:.2e} | {record['tokens_per_s']:,.0f} tok/s | "
        f"elapsed {_clock(elapsed)} | eta {_clock(eta)}"
    )
    if "val_loss" in record:
        line += f" | val_loss {record['val_loss']:.4f}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
