"""The data pipeline on local files: each format loads, packs to seq_len, splits, and caches."""

from __future__ import annotations

import json

import pytest

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
    train, val = prepared.split("train"), prepared.split("val")
    assert len(train) > 0 and len(val) > 0
    assert {len(row) for row in train["input_ids"]} == {32}
    assert prepared.meta["vocab_size"] == 300


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
    assert first.split("val")["input_ids"] != other.split("val")["input_ids"]


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
    assert loaded.split("train")["input_ids"] == trained.split("train")["input_ids"]


def test_wrong_text_field_is_a_config_error(tmp_path):
    from orchestrator.errors import ConfigError

    path = _write(tmp_path, "jsonl")
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=nosuch", "train.seq_len=32"])
    with pytest.raises(ConfigError, match="data.text_field=nosuch: no such column"):
        prepare(cfg.data, 32, seed=0)
