"""The baseline bench/throughput.py compares the orchestrator with: a minimal torchrun + DeepSpeed script.

    torchrun --standalone --nproc_per_node 2 bench/bare_deepspeed.py SPEC.json

It is what a user writes by hand: no Ray, no orchestrator import, the same transformers model, packed
token blocks, DeepSpeed config, seed and LR schedule as the orchestrated run (throughput.py writes them
into SPEC.json), the loss printed every log_every steps. Rank 0 writes SPEC's `result` file: when the
first optimizer step ended (wall clock), tokens/s of every log_every-step window, peak memory per rank.
"""

import json
import math
import os
import resource
import sys
import time

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])

    blocks = np.load(spec["train_blocks"], mmap_mode="r")
    config = AutoConfig.for_model(**spec["model_config"])
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    warmup, max_steps, floor = spec["warmup_steps"], spec["max_steps"], spec["min_lr_ratio"]

    def lr_factor(step: int) -> float:  # linear warmup, cosine decay to a floor (as the orchestrator's)
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    # AdamW groups as nanoGPT's: weight decay on the linear layers' matrices only
    no_decay = {id(p) for m in model.modules() for n, p in m.named_parameters(recurse=False)
                if isinstance(m, (torch.nn.Embedding, torch.nn.LayerNorm)) or "norm" in type(m).__name__.lower()
                or p.ndim < 2}
    decay = spec["ds_config"]["optimizer"]["params"]["weight_decay"]
    groups = [{"params": [p for p in model.parameters() if id(p) not in no_decay], "weight_decay": decay},
              {"params": [p for p in model.parameters() if id(p) in no_decay], "weight_decay": 0.0}]
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups, config=spec["ds_config"],
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor))
    device, micro = engine.device, spec["micro_batch_size"]
    order = np.random.default_rng(spec["seed"]).permutation(len(blocks))[rank::world]
    tokens_per_step = micro * world * blocks.shape[1]

    first_step_at, windows, window_start = None, [], time.perf_counter()
    for step in range(1, max_steps + 1):
        rows = order[((step - 1) * micro) % len(order):][:micro]
        batch = torch.from_numpy(np.ascontiguousarray(blocks[np.sort(rows)])).long().to(device, non_blocking=True)
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        if first_step_at is None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            first_step_at = time.time()
        if step % spec["log_every"] == 0:
            loss_value = loss.item()
            now = time.perf_counter()
            windows.append(spec["log_every"] * tokens_per_step / (now - window_start))
            window_start = now
            if rank == 0:
                print(f"step {step} loss {loss_value:.4f} {windows[-1]:,.0f} tok/s", flush=True)

    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    peaks = [None] * world
    dist.all_gather_object(peaks, peak)
    if rank == 0:
        with open(spec["result"], "w") as f:
            json.dump({"first_step_at": first_step_at, "window_tokens_per_s": windows,
                       "peak_memory_bytes_per_rank": peaks, "world_size": world,
                       "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1])
