"""Streaming sources (data.streaming=true): documents are read with `datasets`' streaming mode as training
goes, tokenized and packed on the fly by every rank, and nothing of the corpus is prepared but its head.

- The head of the stream (its first HEAD_BYTES of text) trains the BPE (unless data.tokenizer_path)
  and gives the validation set, prepared into a cache entry like any other (`pipeline.py`).
- Every `val_every`-th document of the stream is validation's, and training skips it.
- The training stream is the other documents, in order, each followed by EOS, cut into blocks of
  seq_len tokens; when the files end, the leftover tokens are dropped and the next epoch starts the
  files again, in the same order (a stream is not reshuffled: shuffle the files beforehand).
- Each micro-step takes the next batch_size x world_size blocks and rank r keeps the r-th batch_size
  of them (every rank tokenizes the whole stream and keeps its part), so the position is global:
  (epoch, the document the next block starts in, the token offset in it, blocks taken). A resume,
  on any world size, skips to that document without tokenizing what came before.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from orchestrator.config.schema import DataConfig

HEAD_BYTES = 8_000_000
"""Text at the start of the stream that trains the tokenizer and holds the validation documents."""


def val_every(val_fraction: float) -> int:
    """Every this many documents, one is validation's: data.val_fraction of the documents."""
    return max(2, round(1 / val_fraction))


def head(data: DataConfig) -> list[str]:
    """The stream's first documents, HEAD_BYTES of text or all of it."""
    from orchestrator.data.corpus import load_documents

    texts, size = [], 0
    for row in load_documents(data, streaming=True):
        texts.append(row["text"])
        size += len(row["text"].encode())
        if size >= HEAD_BYTES:
            break
    return texts


class StreamingBatches:
    """Same interface as loader.ShardedBatches: next(), state(), restore(), position_after()."""

    def __init__(self, data: DataConfig, tokenizer_file: str, eos: int, seq_len: int, batch_size: int, rank: int,
                 world_size: int) -> None:
        from tokenizers import Tokenizer

        self.data, self.eos, self.seq_len = data, eos, seq_len
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.per_micro_step = batch_size * world_size
        self.every = val_every(data.val_fraction)
        self._tokenizer = Tokenizer.from_file(tokenizer_file)
        self.restore({"epoch": 0, "document": 0, "offset": 0, "samples": 0})

    def restore(self, state: dict) -> None:
        """Continue at the global position a checkpoint recorded, whatever world size wrote it."""
        self.epoch, self.samples = int(state["epoch"]), int(state["samples"])
        self._document, self._offset = int(state["document"]), int(state["offset"])
        self._pending: list[tuple[int, np.ndarray]] = []  # (document, its tokens) not yet wholly taken
        self._documents = None  # the stream, opened at self._document on the next read
        self._read_from = self._document

    def state(self) -> dict:
        return {"epoch": self.epoch, "document": self._document, "offset": self._offset, "samples": self.samples}

    def _read(self) -> bool:
        """Tokenize the next training document into the pending tokens; False at the end of the files."""
        from orchestrator.data.corpus import load_documents

        if self._documents is None:
            self._documents = iter(load_documents(self.data, streaming=True).skip(self._read_from))
        for row in self._documents:
            index, self._read_from = self._read_from, self._read_from + 1
            if index % self.every == 0:
                continue  # validation's
            ids = self._tokenizer.encode(row["text"], add_special_tokens=False).ids
            self._pending.append((index, np.array([*ids, self.eos], dtype=np.int64)))
            return True
        return False

    def _block(self) -> np.ndarray:
        """The next seq_len tokens of the stream; the position moves past them."""
        parts, need, wrapped = [], self.seq_len, 0
        while need:
            while not self._pending:
                if self._read():
                    self._document = self._pending[0][0]
                    continue
                wrapped += 1  # the end of the files: the next epoch starts them again
                if wrapped > 1:
                    raise ValueError(f"data.path={self.data.path}: its training documents hold fewer than "
                                     f"train.seq_len={self.seq_len} tokens")
                self.epoch, self._document, self._offset, parts, need = self.epoch + 1, 0, 0, [], self.seq_len
                self._documents, self._read_from = None, 0
            _, tokens = self._pending[0]
            piece = tokens[self._offset : self._offset + need]
            parts.append(piece)
            need -= len(piece)
            self._offset += len(piece)
            if self._offset == len(tokens):
                self._pending.pop(0)
                self._offset = 0
                self._document = self._pending[0][0] if self._pending else self._read_from
        return np.concatenate(parts)

    def next(self) -> torch.Tensor:
        blocks = [self._block() for _ in range(self.per_micro_step)]
        self.samples += self.per_micro_step
        mine = blocks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return torch.from_numpy(np.stack(mine))

    def position_after(self, micro_steps: int) -> dict:
        """The position after `micro_steps` micro-steps from the start, found by reading the stream that far."""
        replay = copy.copy(self)
        replay.restore({"epoch": 0, "document": 0, "offset": 0, "samples": 0})
        for _ in range(micro_steps):
            replay.next()
        return replay.state()
