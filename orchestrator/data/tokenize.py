"""Parallel tokenization straight into a token shard: documents in, token ids (each document followed by
EOS) appended to a flat file, in document order, with a progress bar of documents/s and tokens/s.

`Tokenization(num_proc)` starts its processes (spawned: the caller may run threads, as a Ray driver
does) before the tokenizer exists, so they come up while it trains. Each task names the tokenizer's
file; a process loads it on its first task and encodes batches of documents; the parent writes the
batches in order as they come back, so memory holds a few batches whatever the corpus size. One
process encodes in the caller, with no pool at all.

`Tokenization(on_ray=True)` sends the batches to Ray tasks instead, on every node of the cluster the
driver has joined (the tokenizer travels once, through the object store), with at most two tasks
per cluster CPU in flight. The driver still reads the documents and writes the shard: the cluster
lends its cores to the part that needs them.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

BATCH_CHARS = 256_000
"""Text per task (at least one document): small enough to balance the processes' work, large enough that
a task's overhead (pickling, a round trip) stays small."""

_loaded: dict[str, object] = {}  # tokenizer file (or JSON digest) -> tokenizers.Tokenizer, in each process


def _one_thread() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism


def _encode(task: tuple[str, int, str, list[str]]) -> tuple[int, np.ndarray]:
    """(documents, their tokens, each document's followed by EOS)."""
    tokenizer_file, eos, dtype, texts = task
    if tokenizer_file not in _loaded:
        from tokenizers import Tokenizer

        _loaded[tokenizer_file] = Tokenizer.from_file(tokenizer_file)
    return _encoded(_loaded[tokenizer_file], eos, dtype, texts)


def _encode_on_ray(tokenizer_json: str, eos: int, dtype: str, texts: list[str]) -> tuple[int, np.ndarray]:
    key = hashlib.sha1(tokenizer_json.encode()).hexdigest()
    if key not in _loaded:
        from tokenizers import Tokenizer

        _one_thread()  # a task holds one CPU

        _loaded[key] = Tokenizer.from_str(tokenizer_json)
    return _encoded(_loaded[key], eos, dtype, texts)


def _encoded(tokenizer, eos: int, dtype: str, texts: list[str]) -> tuple[int, np.ndarray]:
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no character offsets
    rows = encode(texts, add_special_tokens=False)
    return len(texts), np.concatenate([np.array([*row.ids, eos], dtype=dtype) for row in rows])


def _ray_results(tasks: Iterator[tuple[str, int, str, list[str]]]) -> Iterator[tuple[int, np.ndarray]]:
    """`_encode` of each task as Ray tasks, results in order; the tokenizer file is read once, here."""
    import ray

    from orchestrator.errors import ConfigError

    if not ray.is_initialized():
        raise ConfigError(["data.tokenize_on=ray: the driver has not joined a Ray cluster"])
    encode = ray.remote(num_cpus=1, max_retries=3)(_encode_on_ray)
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    tokenizer, in_flight = None, deque()
    for tokenizer_file, eos, dtype, texts in tasks:
        if tokenizer is None:
            tokenizer = ray.put(Path(tokenizer_file).read_text())
        in_flight.append(encode.options(scheduling_strategy="SPREAD").remote(tokenizer, eos, dtype, texts))
        if len(in_flight) >= window:
            yield ray.get(in_flight.popleft())
    while in_flight:
        yield ray.get(in_flight.popleft())


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


class Tokenization:
    """`num_proc` tokenizing processes for the life of the `with` block."""

    def __init__(self, num_proc: int, on_ray: bool = False) -> None:
        self._on_ray = on_ray
        local = num_proc > 1 and not on_ray
        self._pool = multiprocessing.get_context("spawn").Pool(num_proc, _one_thread) if local else None

    def __enter__(self) -> Tokenization:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()

    def into(self, out: BinaryIO, texts: Iterable[str], documents: int, tokenizer_file: Path, eos: int, dtype: str,
             label: str) -> int:
        """Append the tokens of `texts` (`documents` of them, for the bar) to `out`; the number of tokens written."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        tasks = ((str(tokenizer_file), eos, dtype, batch) for batch in _batches(texts))
        if self._on_ray:
            results = _ray_results(tasks)
        elif self._pool is None:
            _one_thread()
            results = map(_encode, tasks)
        else:
            results = self._pool.imap(_encode, tasks)
        written = done = 0
        columns = (TextColumn(f"tokenizing {Path(label).name}"), BarColumn(), MofNCompleteColumn(), TextColumn("docs"),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
        with Progress(*columns) as progress:
            task = progress.add_task("", total=documents, rate="")
            for count, ids in results:
                out.write(ids.tobytes())
                written, done = written + len(ids), done + count
                elapsed = max(progress.tasks[0].elapsed or 0.0, 1e-9)
                progress.update(task, completed=done,
                                rate=f"{done / elapsed:,.0f} docs/s, {written / elapsed:,.0f} tokens/s")
        return written
