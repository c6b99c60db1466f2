"""Parallel tokenization straight into a token shard: documents in, token ids (each document followed by
EOS) appended to a flat file, in document order, with a progress bar of documents/s and tokens/s.

`data.num_proc` processes (spawned: the caller may run threads, as a Ray driver does) each rebuild
the tokenizer from its JSON and encode batches of documents; the parent writes the batches in order
as they come back, so memory holds a few batches whatever the corpus size. One process encodes in
the caller, with no pool to start.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np

BATCH_CHARS = 256_000
"""Text per task (at least one document): small enough to balance the processes' work, large enough that
a task's overhead (pickling, a round trip) stays small."""

_worker: tuple | None = None  # (tokenizers.Tokenizer, eos id, dtype) in a pool process


def _start(tokenizer_json: str, eos: int, dtype: str) -> None:
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes are the parallelism
    from tokenizers import Tokenizer

    _worker = (Tokenizer.from_str(tokenizer_json), eos, dtype)


def _encode(texts: list[str]) -> tuple[int, np.ndarray]:
    """(documents, their tokens)."""
    tokenizer, eos, dtype = _worker
    rows = tokenizer.encode_batch(texts, add_special_tokens=False)
    return len(texts), np.fromiter((t for row in rows for t in (*row.ids, eos)), dtype=dtype)


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenize_into(out: BinaryIO, texts: Iterable[str], documents: int, tokenizer_json: str, eos: int, dtype: str,
                  num_proc: int, label: str) -> int:
    """Append the tokens of `texts` (`documents` of them, for the bar) to `out`; the number of tokens written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    written = 0
    columns = (TextColumn(f"tokenizing {label}"), BarColumn(), MofNCompleteColumn(), TextColumn("docs"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("", total=documents, rate="")
        if num_proc == 1:
            _start(tokenizer_json, eos, dtype)
            results = map(_encode, _batches(texts))
        else:
            pool = multiprocessing.get_context("spawn").Pool(num_proc, _start, (tokenizer_json, eos, dtype))
            results = pool.imap(_encode, _batches(texts))
        try:
            done = 0
            for count, ids in results:
                out.write(ids.tobytes())
                written += len(ids)
                done += count
                elapsed = max(progress.tasks[0].elapsed or 0.0, 1e-9)
                progress.update(task, completed=done,
                                rate=f"{done / elapsed:,.0f} docs/s, {written / elapsed:,.0f} tokens/s")
        finally:
            if num_proc > 1:
                pool.terminate()
    return written
