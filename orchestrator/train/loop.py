"""The per-worker training loop, run by every Ray Train worker. Read `train_loop` top to bottom.

Contract: every rank builds the same model from the same seed (the task's, tasks/), reads its own shard
of the data, and steps a DeepSpeed engine; losses are averaged over ranks before logging. The loop knows
its task and its hooks only through their protocols (train/task.py, train/hooks.py): it never asks which
task it runs or which hooks are plugged in. Rank 0 alone writes metrics.jsonl, events.jsonl, the W&B run,
summary.json and the Hugging Face model (rundir/ names them); every rank writes its checkpoint shard.
Collectives (all_reduce, barriers, ZeRO-3 gathers) are called by all ranks in the same order, so no rank
waits on a branch another rank skipped.

Resume: on every start (the first, a rerun, or Ray Train's restart after a worker failure) the loop
continues from the newest complete checkpoint of its run, or from the checkpoint the driver names;
metrics.jsonl is cut back to that step so every step appears once.
Stop: a stop request (the run directory's STOP file, or SIGTERM/SIGUSR1 in a worker) is shared with all
ranks through the all-reduce that also averages the loss, on logging steps and every STOP_CHECK_EVERY
steps; they checkpoint that step and return.
Lean step: the loss stays on the device; the host waits on the accelerator only at those all-reduces,
so a GPU runs ahead of Python on every other step.
Start-up and throughput: rank 0 prints where the time to the first step went (train/startup.py) and logs
tokens/s, MFU and HFU (train/throughput.py) on every logging step.
Progress: every rank marks where it is (`progress.mark(step, phase)`) before each piece of work that can
block on another rank; the driver's watchdog (train/watchdog.py) ends a rank whose marks stop for
train.collective_timeout_s.
"""

from __future__ import annotations

import gc
import time

from orchestrator.paths import DiskFull
from orchestrator.rundir import EARLY_STOP, Event
from orchestrator.train.payload import WorkerPayload
from orchestrator.train.worker import Worker, setup

STOP_CHECK_EVERY = 10
"""Steps between the all-reduces that share stop requests when no logging step comes sooner: a stop
waits at most this many steps, and other steps need no host sync at all."""


def train_worker(payload: WorkerPayload) -> None:
    """Entry point handed to TorchTrainer. The rank reports its progress to the driver's watchdog until it returns."""
    from orchestrator.train.startup import WORKER_GROUP

    payload.startup.mark(WORKER_GROUP)
    import ray
    import ray.train

    from orchestrator.train.watchdog import Progress

    progress = Progress(ray.get_actor(payload.progress_board), ray.train.get_context().get_world_rank(),
                        ray.get_runtime_context().get_node_id())
    try:
        train_loop(payload, progress)
    except DiskFull as full:  # raised on every rank at once, before a byte was written (train/room.py)
        progress.fail(str(full))  # the driver ends the command in one line; a restart would not find room
    finally:
        progress.close()


def train_loop(payload: WorkerPayload, progress) -> None:
    import torch

    from orchestrator.launch import worker_signals
    from orchestrator.train import engine as ds
    from orchestrator.train.memory_probe import model_state_bytes
    from orchestrator.train.throughput import print_progress

    w = setup(payload, progress)
    t, engine, rank = w.cfg.train, w.engine, w.rank
    first_step = w.start.step + 1 if w.start else 1
    # Everything built so far (Ray, DeepSpeed, transformers, W&B: millions of objects) lives until the end;
    # frozen, Python's garbage collector stops walking it again and again during the steps.
    gc.freeze()
    probe_step = min(first_step + 1, t.max_steps)
    last_loss, metrics, last_step = float("nan"), {}, t.max_steps
    for step in range(first_step, t.max_steps + 1):
        lr = engine.get_lr()[0]  # the rate this step uses (the scheduler moves on in engine.step)
        step_loss, step_count = torch.zeros((), device=engine.device), 0
        progress.mark(step, "step")
        batches = [_to_device(w.batches.next(), engine.device, w.device_type) for _ in range(t.grad_accum)]
        normalizer = w.task.loss_normalizer(batches, t.grad_accum, w.world)
        for micro, batch in enumerate(batches):
            progress.mark(step, "step")
            loss, count = w.task.loss(engine, batch, normalizer)
            engine.backward(loss)
            step_loss += loss.detach() * count
            step_count += count
            if step == probe_step and micro == t.grad_accum - 1:
                # Parameters, gradients and optimizer states all exist now (states appear at the first step).
                w.measured = model_state_bytes(engine)
            engine.step()  # applies the optimizer only at the accumulation boundary
        w.hooks.after_step(step, lambda params: ds.gathered(engine, params))
        w.meter.step_done()
        if step == first_step:
            _first_step_done(w, "compile" if t.compile else "first_step")

        is_last = step == t.max_steps
        evaluates = is_last or bool(t.eval_every and step % t.eval_every == 0)
        logs = is_last or step % t.log_every == 0
        stop = False
        if logs or evaluates or step % STOP_CHECK_EVERY == 0:
            request = w.run.stop_request() if rank == 0 else None
            progress.mark(step, "sync")
            last_loss, stop, finish_early, hashed = _sync(
                step_loss / step_count, worker_signals.requested() or request not in (None, EARLY_STOP),
                request == EARLY_STOP, w.writer.hashed(), engine.device, w.world)
            if hashed:
                w.writer.seal()  # the last checkpoint's hashes are all in: nothing waits
            is_last = is_last or finish_early
            logs = logs or stop or finish_early
            evaluates = evaluates or finish_early

        last_step = step
        record = ({"loss": last_loss, "lr": lr, **w.meter.measure(step), **w.task.metrics(), **w.hooks.step_metrics()}
                  if logs else {})
        w.meter.pause()  # evaluation and checkpoints are not training time
        if evaluates:
            metrics = w.evaluate(step)
            record.update(metrics)
            w.hooks.after_evaluate(step, {"loss": last_loss, **metrics})
        if record and w.tracker is not None:
            w.tracker.log(step, record)
            if "loss" in record:
                print_progress(step, t.max_steps, step - first_step + 1, record, w.meter.elapsed())
        if is_last or stop or (t.ckpt_every and step % t.ckpt_every == 0):
            w.writer.save(step, w.batches.state(), _checkpoint_meta(w, step), seal_now=is_last or stop)
        w.meter.resume(logged=logs)
        if stop and not is_last:
            _stopped(w, step)
            return
        if is_last:
            break

    wall_s = w.meter.elapsed()
    if first_step > t.max_steps:  # resumed from the final checkpoint: only the summary was missing
        metrics = w.evaluate(t.max_steps)
        rows = w.run.rows() if rank == 0 else []
        last_loss = rows[-1]["loss"] if rows else float("nan")
    _finish(w, last_step, last_loss, metrics, wall_s)


def _to_device(batch, device, device_type: str):
    if device_type == "cuda":  # a pinned copy lets the transfer overlap the GPU's queued work
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def _sync(loss, stop: bool, finish: bool, hashed: bool, device, world: int) -> tuple[float, bool, bool, bool]:
    """One all-reduce carries the loss (a device tensor until now), every rank's stop and finish-early
    requests, and whether its share of the last checkpoint is hashed; the one host sync of a step, and
    only on steps that log or may stop. Returns (mean loss, stop, finish early, every rank hashed)."""
    import torch
    import torch.distributed as dist

    flags = torch.tensor([float(stop), float(finish), float(hashed)], dtype=torch.float64, device=device)
    tensor = torch.cat([loss.detach().to(torch.float64).reshape(1), flags])
    dist.all_reduce(tensor)
    values = tensor.tolist()
    return values[0] / world, values[1] > 0, values[2] > 0, values[3] == world


def _checkpoint_meta(w: Worker, step: int) -> dict:
    """What the checkpoint's manifest records beside its files (resume and `compare` read it)."""
    return {"step": step, "tokens": step * w.payload.plan.tokens_per_step, "world_size": w.world,
            "global_batch": w.payload.plan.global_batch, "data": w.batches.state(), "zero_stage": w.cfg.zero.stage,
            "wandb_run_id": w.payload.run_id, "time": time.time()}


def _stopped(w: Worker, step: int) -> None:
    if w.rank == 0:
        print(f"stop requested: checkpoint of step {step} written; rerun the same command to resume", flush=True)
        w.run.append_event(Event.preempted, step)
        w.tracker.close()


def _finish(w: Worker, last_step: int, last_loss: float, metrics: dict[str, float], wall_s: float) -> None:
    """The final model (Hugging Face format, with the tokenizer) and summary.json; every rank takes part."""
    import torch.distributed as dist

    from orchestrator.data.loader import eval_batches
    from orchestrator.data.tokenizer import load_tokenizer
    from orchestrator.train import engine as ds
    from orchestrator.train import room
    from orchestrator.train.summary import checkpoint_cost, gather_per_rank

    t = w.cfg.train
    status = "completed" if last_step == t.max_steps else EARLY_STOP
    w.progress.mark(last_step, "finish")
    report = w.task.final_report(w.engine, w.data, t.micro_batch_size, w.rank, w.world)
    state = ds.full_state_dict(w.engine)
    room.ensure(w.run.model, room.tensor_bytes(state) if w.rank == 0 else 0, "the exported model")
    per_rank = gather_per_rank(w.device_type, w.measured or {}, w.load_memory_bytes)
    if w.rank == 0:
        plan, model_dir = w.payload.plan, w.run.model
        every_rank_val = [b for r in range(w.world)
                          for b in eval_batches(w.val_blocks, t.micro_batch_size, r, w.world, t.eval_batches)]
        state = w.hooks.export_state(state)
        if not w.hooks.export(w.engine.module, state, model_dir, every_rank_val, metrics):
            w.task.export(w.engine.module, state, model_dir)
        w.progress.mark(last_step, "finish")
        load_tokenizer(str(w.data.tokenizer_dir)).save_pretrained(str(model_dir))
        summary = {
            "final_train_loss": last_loss,
            **{f"final_{name}": value for name, value in metrics.items()},
            "status": status,
            "steps": last_step,
            "tokens": last_step * plan.tokens_per_step,
            "wall_s": wall_s,
            "resumed_from_step": w.start.step if w.start else None,
            "data_position": w.batches.state(),  # samples drawn, in all, and from each of data.sources
            "world_size": w.world,
            "device": w.device_type,
            **per_rank,
            "predicted_model_state_bytes_per_rank": plan.memory["model_states"],
            "predicted_memory_bytes_per_rank": plan.memory,
            "params": w.n_params,
            **w.meter.summary(),
            **w.task.metrics(),
            **report,
            **checkpoint_cost(w.writer.sealed),
            "flops_per_token": w.meter.flops_per_token,
            "peak_flops_per_device": w.meter.peak_flops,
            "peak_flops_source": w.peak_flops_source,
            "startup": w.payload.startup.breakdown(),
            **w.hooks.summary(),
        }
        w.run.write_summary(summary)
        w.tracker.finish(summary)
        w.run.append_event(Event.finished if status == "completed" else Event.early_stopped, last_step)
    w.progress.mark(last_step, "finish")
    dist.barrier()


def _first_step_done(w: Worker, phase: str) -> None:
    """Close the start-up timeline once the first optimizer step has really finished, and show it."""
    if w.device_type == "cuda":
        import torch

        torch.cuda.synchronize()
    w.payload.startup.mark(phase)
    if w.rank == 0:
        print(w.payload.startup.describe(), flush=True)


