"""Per-rank batches cut from one global, seeded sample order, so the data position survives a change
of world size.

Every epoch draws a fresh permutation of the blocks from (seed, epoch): the global order. Each
micro-step consumes the next `batch_size x world_size` samples of it, and rank r takes the r-th
`batch_size` of those; an epoch ends when fewer than that remain (the tail waits for the next
epoch's reshuffle). The position is the global sample count (epoch, samples), the same on every
rank: a checkpoint written by N ranks resumes on M at exactly the next unseen sample, and with
grad_accum scaled to keep the global batch, every optimizer step sees the same samples as it
would have on N ranks.
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
    samples: int = 0
    """Samples of this epoch's global order already consumed, by all ranks together."""

    def __post_init__(self) -> None:
        self.per_micro_step = self.batch_size * self.world_size
        self.batches_per_epoch = len(self.blocks) // self.per_micro_step
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.blocks)} blocks cannot give each of {self.world_size} ranks one batch of "
                f"{self.batch_size}; use more data or a smaller train.micro_batch_size"
            )
        self._order = self._epoch_order()

    def _epoch_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.blocks), generator=g)

    def next(self) -> torch.Tensor:
        if self.samples + self.per_micro_step > len(self.blocks):
            self.epoch, self.samples = self.epoch + 1, 0
            self._order = self._epoch_order()
        start = self.samples + self.rank * self.batch_size
        idx = self._order[start : start + self.batch_size]
        self.samples += self.per_micro_step
        return self.blocks[idx]

    def state(self) -> dict:
        return {"epoch": self.epoch, "samples": self.samples}

    def restore(self, state: dict) -> None:
        """Continue at the global position a checkpoint recorded, whatever world size wrote it."""
        self.epoch, self.samples = int(state["epoch"]), int(state["samples"])
        self._order = self._epoch_order()

    def position_after(self, micro_steps: int) -> dict:
        """The position after `micro_steps` micro-steps from the start at this world size: for a checkpoint
        that recorded no position (a universal checkpoint converted by hand)."""
        epoch, done = divmod(micro_steps, self.batches_per_epoch)
        return {"epoch": epoch, "samples": done * self.per_micro_step}


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
