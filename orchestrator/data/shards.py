"""Token shards: one flat file of token ids per cache entry, in the smallest unsigned dtype that holds the
vocabulary (2 bytes a token below 65,536 ids, else 4), read through `numpy.memmap`.

A block is `seq_len` consecutive tokens, so block i starts at token i x seq_len: the index of block
offsets is that product, and each split stores only which blocks it holds (`train.idx.npy`,
`val.idx.npy`, memory-mapped too). A rank reads just the rows of the blocks in its batch; the
ranks of a node share the file through the page cache, and a rank's resident memory does not grow
with the corpus (only its per-epoch sample order does: 8 bytes a block).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the driver prepares shards without torch; only a worker reads them as tensors
    import torch


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenBlocks:
    """Blocks `index` of a [n_blocks, seq_len] token array; `blocks[i]` reads rows as an int64 tensor."""

    def __init__(self, tokens: np.ndarray, index: np.ndarray) -> None:
        self.tokens, self.index = tokens, index

    @classmethod
    def open(cls, tokens_path: Path, dtype: str, seq_len: int, index_path: Path) -> TokenBlocks:
        tokens = np.memmap(tokens_path, dtype=dtype, mode="r")
        return cls(tokens.reshape(-1, seq_len), np.load(index_path, mmap_mode="r"))

    def __len__(self) -> int:
        return len(self.index)

    def part(self, start: int, stop: int) -> TokenBlocks:
        """Blocks start..stop of this index, unread."""
        return TokenBlocks(self.tokens, self.index[start:stop])

    def __getitem__(self, key) -> torch.Tensor:
        """The blocks at `key` (a slice, or integer positions), read from the file: [len, seq_len] int64."""
        import torch

        rows = self.index[key] if isinstance(key, slice) else self.index[np.asarray(key, dtype=np.int64)]
        return torch.from_numpy(self.tokens[np.asarray(rows)].astype(np.int64))
