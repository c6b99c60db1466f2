"""The data pipeline on local files: each format loads, packs to seq_len into a uint16 token shard, splits,
and caches; a mixture keeps its sources apart; the shard is the same whatever the number of processes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orchestrator.config.compose import compose
from orchestrator.data.pipeline import prepare

TEXT = "\n".join(f"def function_{i}(x):\n    return x * {i} + {i * i}\n" for i in range(400))


def _write(tmp_path, fmt: str):
    docs = [TEXT[i : i + 900] for i in range(0, len(TEXT), 900)]
    if fmt == "txt":
        for i, doc in enumerate(docs):
            (tmp_path / f"doc{i:03d}.txt").write_text(doc)
        return tmp_path
    if fmt == "jsonl":
        path = tmp_path / "corpus.jsonl"
        path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)))
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"body": docs}), path)
    return path


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_local_files_become_packed_blocks(tmp_path, fmt):
    source = tmp_path / "in"
    source.mkdir()
    path = _write(source, fmt)
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=body", "data.vocab_size=300",
                   "train.seq_len=32"])
    prepared = prepare(cfg.data, cfg.train.seq_len, cfg.train.seed)
    train, val = prepared.blocks("train"), prepared.blocks("val")
    assert len(train) > 0 and len(val) > 0
    assert train[0:3].shape == (3, 32) and train[0:3].dtype == torch.int64
    meta = prepared.meta
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16"
    assert (prepared.root / "tokens.bin").stat().st_size == 2 * meta["tokens"]  # 2 bytes a token
    assert meta["train_blocks"] + meta["val_blocks"] == meta["tokens"] // 32
    everything = set(np.load(prepared.root / "train.idx.npy")) | set(np.load(prepared.root / "val.idx.npy"))
    assert everything == set(range(meta["tokens"] // 32))  # every block in exactly one split


def test_same_seed_same_split_and_cache_is_reused(tmp_path):
    path = _write(tmp_path, "jsonl")
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=body", "data.vocab_size=300",
                   "train.seq_len=32"])
    first = prepare(cfg.data, 32, seed=0)
    stamp = (first.root / "meta.json").stat().st_mtime_ns
    again = prepare(cfg.data, 32, seed=0)
    assert again.root == first.root
    assert (again.root / "meta.json").stat().st_mtime_ns == stamp  # not rebuilt
    other = prepare(cfg.data, 32, seed=1)
    assert other.root != first.root
    assert not torch.equal(first.blocks("val")[:], other.blocks("val")[:])


def test_a_local_tokenizer_folder_is_used_as_is(tmp_path):
    path = _write(tmp_path, "jsonl")
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=body", "data.vocab_size=320",
                   "train.seq_len=32"])
    trained = prepare(cfg.data, 32, seed=0)
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=body",
                   f"data.tokenizer_path={trained.tokenizer_dir}", "train.seq_len=32"])
    loaded = prepare(cfg.data, 32, seed=0)
    assert loaded.root != trained.root
    assert loaded.meta["vocab_size"] == 320
    assert torch.equal(loaded.blocks("train")[:], trained.blocks("train")[:])


def test_wrong_text_field_is_a_config_error(tmp_path):
    from orchestrator.errors import ConfigError

    path = _write(tmp_path, "jsonl")
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=nosuch", "train.seq_len=32"])
    with pytest.raises(ConfigError, match="data.text_field=nosuch: no such column"):
        prepare(cfg.data, 32, seed=0)


def test_the_shard_is_the_same_with_one_process_or_two(tmp_path):
    path = _write(tmp_path, "jsonl")
    shards = []
    for num_proc in (1, 2):
        cfg = compose(["data=local", f"data.path={path}", "data.text_field=body", "data.vocab_size=300",
                       "train.seq_len=32", f"data.num_proc={num_proc}", f"data.cache_dir={tmp_path / str(num_proc)}"])
        shards.append((prepare(cfg.data, 32, seed=0).root / "tokens.bin").read_bytes())
    assert shards[0] == shards[1]


def test_a_mixture_keeps_each_sources_blocks_and_normalizes_the_weights(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _write(tmp_path / "a", "jsonl"), _write(tmp_path / "b", "txt")
    cfg = compose(["data=local", "data.path=null", "data.vocab_size=300", "train.seq_len=32",
                   f"data.sources=[{{path: '{a}', weight: 3, text_field: body}}, {{path: '{b}', weight: 1}}]"])
    prepared = prepare(cfg.data, 32, seed=0)
    first, second = prepared.meta["sources"]
    assert (first["weight"], second["weight"]) == (0.75, 0.25)
    parts = prepared.train_sources()
    assert [len(part) for part in parts] == [first["train_blocks"], second["train_blocks"]]
    assert int(parts[0].index.max()) < first["train_blocks"] + first["val_blocks"] <= int(parts[1].index.min())
