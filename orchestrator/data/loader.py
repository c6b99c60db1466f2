"""Per-rank batches cut from one global, seeded sample order, so the data position survives a change
of world size; with several sources, a weighted mixture drawn from the seed.

The global order is a stream of samples. Position g of the stream comes from source s(g), drawn with
the sources' weights by a generator seeded from (seed, g's chunk), so any position's source is known
without replaying the stream; the k-th sample a source gives is block perm_e[k mod n] of its own
blocks, where perm_e is that source's seeded permutation for its epoch e = k div n (every source
reshuffles when it runs out, independently of the others). One source is the mixture of weight 1.

Each micro-step consumes the next `batch_size x world_size` positions, and rank r takes the r-th
`batch_size` of them. The position is the global sample count plus how many samples each source has
given, the same on every rank: a checkpoint written by N ranks resumes on M at exactly the next
unseen sample, and with grad_accum scaled to keep the global batch, every optimizer step sees the
same samples as it would have on N ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from orchestrator.data.shards import TokenBlocks

CHOICE_CHUNK = 1 << 16
"""Positions whose sources one generator draws: position g's source needs only chunk g // CHOICE_CHUNK."""


class ShardedBatches:
    def __init__(self, sources: list[TokenBlocks], weights: list[float], batch_size: int, rank: int,
                 world_size: int, seed: int) -> None:
        self.sources, self.batch_size, self.rank, self.world_size, self.seed = (sources, batch_size, rank,
                                                                                world_size, seed)
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.per_micro_step = batch_size * world_size
        total = sum(len(source) for source in sources)
        if total < self.per_micro_step or any(len(source) == 0 for source in sources):
            raise ValueError(f"{total} blocks cannot give each of {world_size} ranks one batch of {batch_size}; "
                             "use more data or a smaller train.micro_batch_size")
        self.samples = 0
        """Positions of the global stream consumed, by all ranks together."""
        self.taken = [0] * len(sources)
        """Samples each source has given."""
        self._chunk: tuple[int, np.ndarray] | None = None
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def _choices(self, start: int, stop: int) -> np.ndarray:
        """The source of each position start..stop-1."""
        if len(self.sources) == 1:
            return np.zeros(stop - start, dtype=np.int64)
        out = []
        for chunk in range(start // CHOICE_CHUNK, (stop - 1) // CHOICE_CHUNK + 1):
            if self._chunk is None or self._chunk[0] != chunk:
                rng = np.random.default_rng([self.seed, 1_000_003, chunk])
                self._chunk = (chunk, rng.choice(len(self.sources), size=CHOICE_CHUNK, p=self.weights))
            lo, hi = max(start, chunk * CHOICE_CHUNK), min(stop, (chunk + 1) * CHOICE_CHUNK)
            out.append(self._chunk[1][lo - chunk * CHOICE_CHUNK : hi - chunk * CHOICE_CHUNK])
        return np.concatenate(out)

    def _block(self, source: int, k: int) -> int:
        """Position in `sources[source]` of the k-th sample that source gives."""
        epoch, i = divmod(k, len(self.sources[source]))
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, source, epoch])
            cached = self._orders[source] = (epoch, rng.permutation(len(self.sources[source])))
        return int(cached[1][i])

    def next(self) -> torch.Tensor:
        start = self.samples
        choices = self._choices(start, start + self.per_micro_step)
        mine = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        rows = []
        for position, source in enumerate(choices):
            k = self.taken[source]
            self.taken[source] += 1
            if position in mine:
                rows.append(self.sources[source][[self._block(source, k)]])
        self.samples += self.per_micro_step
        return torch.cat(rows)

    def state(self) -> dict:
        return {"samples": self.samples, "sources": list(self.taken)}

    def restore(self, state: dict) -> None:
        """Continue at the global position a checkpoint recorded, whatever world size wrote it."""
        self.samples, self.taken = int(state["samples"]), [int(k) for k in state["sources"]]

    def position_after(self, micro_steps: int) -> dict:
        """The position after `micro_steps` micro-steps from the start at this world size: for a checkpoint
        that recorded no position (a universal checkpoint converted by hand)."""
        samples = micro_steps * self.per_micro_step
        choices = self._choices(0, samples) if samples else np.zeros(0, dtype=np.int64)
        return {"samples": samples, "sources": np.bincount(choices, minlength=len(self.sources)).tolist()}


def eval_batches(blocks: TokenBlocks, batch_size: int, rank: int, world_size: int, limit: int):
    """Fixed validation batches for this rank: the same every evaluation, disjoint across ranks.

    Every rank yields the same number of batches: under ZeRO-3 each forward pass is a
    collective, so a rank with one batch more would hang the others.
    """
    per_rank = len(blocks) // world_size
    mine = np.arange(rank, len(blocks), world_size)[:per_rank] if per_rank else np.arange(len(blocks))
    count = min(limit, -(-len(mine) // batch_size))  # a tiny val set: every rank shares it
    for i in range(count):
        yield blocks[mine[i * batch_size : (i + 1) * batch_size]]
