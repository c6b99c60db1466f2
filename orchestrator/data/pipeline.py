"""Documents -> tokens -> packed `seq_len` blocks -> train/val split, cached between runs.

`prepare` is idempotent and safe to call from many processes at once (a file lock guards the
cache entry): the driver calls it first so problems surface before Ray starts and the
tokenizer is trained once; workers call it again and simply open the cached result (on a
multi-node cluster without a shared cache, each node builds the same entry itself).
The cache key covers the input files (path, size, mtime) and every setting that changes the
output, so an edit to either rebuilds it. The split depends on the seed and nothing else.

An entry holds one token shard (`tokens.bin`, see `shards.py`): each source's documents tokenized
in parallel (`tokenize.py`), EOS after each, cut into blocks of `seq_len` tokens (a source's tail
that fills no block is dropped), sources one after another. Every source holds out its own
`data.val_fraction` of blocks for validation; `train.idx.npy` / `val.idx.npy` list the blocks for
training (source by source: meta.json's `sources` says how many each holds) and validation
(all sources' blocks shuffled together, so the first evaluation batches sample every source).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from orchestrator.config.schema import DataConfig, TokenizeOn
from orchestrator.data import file_checks
from orchestrator.data.cache import build_once, seal
from orchestrator.data.corpus import file_format, load_documents, source_files
from orchestrator.data.shards import TokenBlocks, token_dtype
from orchestrator.errors import ConfigError
from orchestrator.machine import available_cpus

_FORMAT_VERSION = 3  # bump when the prepared layout or tokenization changes (3: meta.json's file sizes)


@dataclass(frozen=True)
class Source:
    """One dataset of the entry: its own data config (path, text field), its weight, its name in messages."""

    data: DataConfig
    weight: float
    name: str


def sources(data: DataConfig) -> list[Source]:
    """data.sources with normalized weights, or data.path (or the built-in corpus) as the only source."""
    if not data.sources:
        return [Source(data, 1.0, data.path or data.name)]
    total = sum(s.weight for s in data.sources)
    return [Source(dataclasses.replace(data, path=s.path, text_field=s.text_field, sources=None), s.weight / total,
                   s.path) for s in data.sources]


@dataclass(frozen=True)
class CacheEntry:
    """A prepared entry of the data cache: its folder, the config it was built from, its tokenizer, meta.json."""

    root: Path
    config: DataConfig

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @cached_property
    def meta(self) -> dict:
        """meta.json, read once: an entry is sealed whole (a rename) and never changes after."""
        return json.loads((self.root / "meta.json").read_text())


class RowsEntry(CacheEntry):
    """An entry whose splits are whole rows saved as `rows-<split>.npy` (SFT's packed chats, classification's
    labelled rows), read memory-mapped; training batches drawn from the `train` split."""

    def blocks(self, name: str):
        """The split's rows, memory-mapped: `[i]` reads them as an int64 tensor."""
        from orchestrator.data.shards import TokenBlocks

        rows = np.load(self.root / f"rows-{name}.npy", mmap_mode="r")
        return TokenBlocks(rows, np.arange(len(rows)))

    def batches(self, batch_size: int, rank: int, world_size: int, seed: int):
        from orchestrator.data.loader import ShardedBatches

        return ShardedBatches([self.blocks("train")], [1.0], batch_size, rank, world_size, seed)


class PreparedData(CacheEntry):
    """Pretraining's entry: the token shard of every source, cut into blocks."""

    def blocks(self, name: str) -> TokenBlocks:
        """The `train` or `val` split, every source's blocks, memory-mapped."""
        meta = self.meta
        return TokenBlocks.open(self.root / "tokens.bin", meta["dtype"], meta["seq_len"], self.root / f"{name}.idx.npy")

    def train_sources(self) -> list[TokenBlocks]:
        """The training blocks, one TokenBlocks per source, in data.sources order."""
        blocks, parts, start = self.blocks("train"), [], 0
        for source in self.meta["sources"]:
            parts.append(blocks.part(start, start + source["train_blocks"]))
            start += source["train_blocks"]
        return parts

    def batches(self, batch_size: int, rank: int, world_size: int, seed: int):
        """This rank's training batches: the sources mixed with their weights (`loader.py`), or read from the
        stream (`streaming.py`)."""
        from orchestrator.data.loader import ShardedBatches
        from orchestrator.data.streaming import StreamingBatches

        meta = self.meta
        if meta["streaming"]:
            return StreamingBatches(self.config, str(self.tokenizer_dir / "tokenizer.json"), meta["eos_token_id"],
                                    meta["seq_len"], batch_size, rank, world_size)
        weights = [source.weight for source in sources(self.config)]  # not in the entry: weights change no tokens
        return ShardedBatches(self.train_sources(), weights, batch_size, rank, world_size, seed)

    def describe(self, total_tokens: int) -> list[str]:
        """Per source: its share of the run's training tokens, and how many passes over its blocks that is."""
        meta = self.meta
        if meta["streaming"]:
            return [f"  streamed: ~{total_tokens:,} tokens of this run, read as it goes"]
        lines = []
        for source, weight in zip(meta["sources"], (s.weight for s in sources(self.config)), strict=True):
            share = weight * total_tokens
            epochs = share / (source["train_blocks"] * meta["seq_len"])
            lines.append(f"  {source['name']}: weight {weight:.2f}, {source['train_blocks']:,} train blocks "
                         f"({source['train_blocks'] * meta['seq_len']:,} tokens), ~{share:,.0f} tokens of this run = "
                         f"{epochs:.2f} epochs")
        return lines


def cache_key(data: DataConfig, seq_len: int, seed: int) -> str:
    def fingerprint_of(source: Source) -> dict:
        files = source_files(source.data)
        return {
            "files": [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files],
            "format": file_format(source.data, files).value if files else None,
            "text_field": source.data.text_field,
        }

    fingerprint = {
        "version": _FORMAT_VERSION,
        "sources": [fingerprint_of(source) for source in sources(data)],
        "streaming": data.streaming,
        "tokenizer": tokenizer_fingerprint(Path(data.tokenizer_path).expanduser()) if data.tokenizer_path
        else data.vocab_size,
        "seq_len": seq_len,
        "val_fraction": data.val_fraction,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_fingerprint(folder: Path) -> list:
    """The tokenizer folder's files (name, size, mtime): an edited or replaced tokenizer rebuilds the entry."""
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())
            if f.is_file() and f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens"))]


def prepare(data: DataConfig, seq_len: int, seed: int) -> PreparedData:
    """Build (or reuse) the tokenizer and the packed train/val splits for this config."""
    cache = Path(data.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    key = cache_key(data, seq_len, seed)
    prepared = PreparedData(cache / f"{data.name}-{key}", data)
    build_once(prepared.root, lambda: _unreadable(data), lambda: _build(data, seq_len, seed, prepared))
    return prepared


def _unreadable(data: DataConfig) -> list[str]:
    """The user's local files that cannot be read as their format, one line each (the built-in corpus and
    remote streams are not checked)."""
    found = []
    for source in sources(data):
        if source.data.path is None:
            continue
        files = [f for f in source_files(source.data) if Path(f).is_file()]
        found += file_checks.problems(files, file_format(source.data, files), source.name,
                                      "data.path" if not data.sources else "data.sources")
    return found


def _build(data: DataConfig, seq_len: int, seed: int, out: PreparedData) -> None:
    import shutil

    from orchestrator.data.tokenize import Tokenization

    tmp = out.root.with_name(out.root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mixture = sources(data)
    on_ray = data.tokenize_on is TokenizeOn.ray
    # the processes start while the BPE trains
    with Tokenization(data.num_proc or available_cpus(), on_ray) as tokenization:
        if data.streaming:
            return _build_stream_head(data, seq_len, tokenization, tmp, out)
        docs = [load_documents(source.data) for source in mixture]
        for source, documents in zip(mixture, docs, strict=True):
            if len(documents) == 0:
                raise ConfigError([f"data.path={source.name}: holds no documents"])
        tokenizer = _tokenizer(data, (row["text"] for documents in docs for row in documents),
                               f"{sum(map(len, docs))} documents", tmp)
        eos = tokenizer.eos_token_id
        dtype = token_dtype(len(tokenizer))
        rows, train, val, first = [], [], [], 0
        with open(tmp / "tokens.bin", "wb") as shard:
            for i, (source, documents) in enumerate(zip(mixture, docs, strict=True)):
                texts = (text for batch in documents.iter(batch_size=1000) for text in batch["text"])
                tokens = tokenization.into(shard, texts, len(documents), tmp / "tokenizer" / "tokenizer.json", eos,
                                           dtype.name, source.name)
                blocks = tokens // seq_len
                shard.truncate((first + blocks) * seq_len * dtype.itemsize)  # the tail that fills no block
                shard.seek(0, os.SEEK_END)
                n_val = max(1, round(blocks * data.val_fraction))
                if blocks - n_val < 2:
                    raise ConfigError([f"data.path={source.name}: only {blocks} blocks of train.seq_len={seq_len} "
                                       "tokens; use more text or a shorter train.seq_len"])
                order = first + np.random.default_rng([seed, i]).permutation(blocks)
                val.append(order[:n_val])
                train.append(np.sort(order[n_val:]))
                rows.append({"name": source.name, "documents": len(documents),
                             "tokens": blocks * seq_len, "train_blocks": blocks - n_val, "val_blocks": n_val})
                first += blocks
    np.save(tmp / "train.idx.npy", np.concatenate(train))
    np.save(tmp / "val.idx.npy", np.random.default_rng(seed).permutation(np.concatenate(val)))  # sources mixed
    meta = {
        "vocab_size": len(tokenizer),
        "eos_token_id": eos,
        "dtype": dtype.name,
        "bytes_per_token": dtype.itemsize,
        "documents": sum(row["documents"] for row in rows),
        "tokens": first * seq_len,
        "seq_len": seq_len,
        "train_blocks": sum(row["train_blocks"] for row in rows),
        "val_blocks": sum(row["val_blocks"] for row in rows),
        "sources": rows,
        "streaming": False,
    }
    seal(tmp, meta, out.root)


def _build_stream_head(data: DataConfig, seq_len: int, tokenization, tmp: Path, out: PreparedData) -> None:
    """data.streaming: only the tokenizer and the validation blocks, from the head of the stream."""
    from orchestrator.data.streaming import head, val_every

    texts = head(data)
    if not texts:
        raise ConfigError([f"data.path={data.path}: holds no documents"])
    tokenizer = _tokenizer(data, texts, f"the stream's first {len(texts)} documents", tmp)
    dtype = token_dtype(len(tokenizer))
    validation = texts[:: val_every(data.val_fraction)]  # documents 0, every, 2 x every, ...: training skips them
    label = f"{Path(data.path or data.name).name} (validation)"
    with open(tmp / "tokens.bin", "wb") as shard:
        tokens = tokenization.into(shard, validation, len(validation), tmp / "tokenizer" / "tokenizer.json",
                                   tokenizer.eos_token_id, dtype.name, label)
        blocks = tokens // seq_len
        shard.truncate(blocks * seq_len * dtype.itemsize)
    if blocks < 1:
        raise ConfigError([f"data.path={data.path}: its validation documents (every "
                           f"{val_every(data.val_fraction)}th) hold no block of train.seq_len={seq_len} tokens; "
                           "use more text, a larger data.val_fraction or a shorter train.seq_len"])
    np.save(tmp / "train.idx.npy", np.arange(0))
    np.save(tmp / "val.idx.npy", np.arange(blocks))
    meta = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "dtype": dtype.name,
            "bytes_per_token": dtype.itemsize, "documents": None, "tokens": None, "seq_len": seq_len,
            "train_blocks": None, "val_blocks": blocks, "sources": [], "streaming": True}
    seal(tmp, meta, out.root)


def _tokenizer(data: DataConfig, texts, what: str, tmp: Path):
    """data.tokenizer_path's tokenizer, or a BPE trained on `texts`; saved into the entry (the processes that
    tokenize read it from there)."""
    from orchestrator.data.tokenizer import load_tokenizer, train_bpe

    if data.tokenizer_path:
        tokenizer = load_tokenizer(data.tokenizer_path)
    else:
        print(f"training a byte-level BPE tokenizer (vocab {data.vocab_size}) on {what}", flush=True)
        tokenizer = train_bpe(texts, data.vocab_size)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    return tokenizer

