"""Room on disk for a checkpoint or an export, agreed by every rank before any of them writes a byte.

Each rank says what it will write and what its filesystem has free; the bytes of the ranks on one host add
up against that host's free space (ranks of one machine share its disks). Every rank sees the same figures
and raises the same `DiskFull` at the same point, so none is left waiting in a collective, the job ends in
one line (train/loop.py hands it to the driver) and no checkpoint is half-written. Ranks of different hosts
writing to one shared filesystem are each checked for their own host's bytes only; a write that still finds
the disk full ends the job through the ordinary failure path (train/failures.py names it).
"""

from __future__ import annotations

import socket
from pathlib import Path

from orchestrator.paths import DiskFull, free_bytes

SAFETY = 1.01
"""On the estimate from tensor sizes: the files' own overhead (pickle, zip)."""
MARGIN_BYTES = 1 << 20
"""Left free besides: the manifest, rank states, metrics, events and W&B's files written meanwhile."""


def ensure(path: Path, need: int, what: str) -> None:
    """Raise DiskFull on every rank if any host lacks room for its ranks' `need` bytes under `path` (a collective)."""
    import torch.distributed as dist

    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, (socket.gethostname(), need, free_bytes(path)))
    hosts: dict[str, tuple[int, int]] = {}
    for host, wanted, free in every:
        total, least = hosts.get(host, (0, free))
        hosts[host] = (total + wanted, min(least, free))
    for total, free in hosts.values():
        if total and total * SAFETY + MARGIN_BYTES > free:
            raise DiskFull(what, path, int(total * SAFETY + MARGIN_BYTES), free)


def checkpoint_bytes(engine, rank: int) -> int:
    """What this rank's part of a DeepSpeed checkpoint holds: its optimizer states and fp32 masters, and, on
    rank 0 below ZeRO-3, the trainable parameters (frozen ones are left out: train/engine.save_checkpoint)."""
    from orchestrator.train.memory_probe import optimizer_bytes

    params = 0
    if rank == 0 and not engine.zero_optimization_partition_weights():
        params = sum(p.numel() * p.element_size() for p in engine.module.parameters() if p.requires_grad)
    return params + optimizer_bytes(engine)


def tensor_bytes(state: dict) -> int:
    """Bytes of the tensors in a state dict (an export writes about this much)."""
    return sum(t.numel() * t.element_size() for t in state.values() if hasattr(t, "element_size"))
