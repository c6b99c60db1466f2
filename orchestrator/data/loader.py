"""Per-rank batches: each rank reads a disjoint, seeded shard of the packed blocks.

Every epoch draws a fresh permutation from (seed, epoch); rank r takes positions r, r+W, ...
of it, cut to the same length on every rank so all ranks step together. The position is
two integers (epoch, offset), so a checkpoint can record exactly where each rank stands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ShardedBatches:
    blocks: torch.Tensor
    """All packed blocks, [n_blocks, seq_len] int64."""
    batch_size: int
    rank: int
    world_size: int
    seed: int
    epoch: int = 0
    offset: int = 0
    """Batches already taken in this epoch."""

    def __post_init__(self) -> None:
        self.per_rank = len(self.blocks) // self.world_size
        self.batches_per_epoch = self.per_rank // self.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.blocks)} blocks cannot give each of {self.world_size} ranks one batch of "
                f"{self.batch_size}; use more data or a smaller train.micro_batch_size"
            )
        self._order = self._epoch_order()

    def _epoch_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.blocks), generator=g)
        return perm[self.rank :: self.world_size][: self.per_rank]

    def next(self) -> torch.Tensor:
        if self.offset == self.batches_per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0
            self._order = self._epoch_order()
        idx = self._order[self.offset * self.batch_size : (self.offset + 1) * self.batch_size]
        self.offset += 1
        return self.blocks[idx]

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        """Continue exactly where a checkpointed loader stood."""
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._epoch_order()


def eval_batches(blocks: torch.Tensor, batch_size: int, rank: int, world_size: int, limit: int):
    """Fixed validation batches for this rank: the same every evaluation, disjoint across ranks.

    Every rank yields the same number of batches: under ZeRO-3 each forward pass is a
    collective, so a rank with one batch more would hang the others.
    """
    per_rank = len(blocks) // world_size
    mine = blocks[rank::world_size][:per_rank] if per_rank else blocks  # tiny val set: all ranks share it
    count = min(limit, -(-len(mine) // batch_size))
    for i in range(count):
        yield mine[i * batch_size : (i + 1) * batch_size]
