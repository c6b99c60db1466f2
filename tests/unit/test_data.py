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
    assert [line.split(": weight ")[1][:4] for line in prepared.describe(1000)] == ["0.75", "0.25"]
    parts = prepared.train_sources()
    assert [len(part) for part in parts] == [first["train_blocks"], second["train_blocks"]]
    assert int(parts[0].index.max()) < first["train_blocks"] + first["val_blocks"] <= int(parts[1].index.min())


def _stream(tmp_path, *extra: str):
    path = _write(tmp_path, "jsonl")
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=body", "data.vocab_size=300",
                   "data.streaming=true", "train.seq_len=32", *extra])
    return cfg, prepare(cfg.data, 32, seed=0)


def test_a_stream_prepares_only_its_validation_blocks_and_resumes_at_any_world_size(tmp_path):
    cfg, prepared = _stream(tmp_path)
    meta = prepared.meta
    assert meta["streaming"] and meta["val_blocks"] >= 1 and len(prepared.blocks("train")) == 0

    def step(loaders, accum=1):
        return [row.tolist() for loader in loaders for _ in range(accum) for row in loader.next()]

    two = [prepared.batches(2, rank, 2, seed=0) for rank in range(2)]
    straight = [step(two) for _ in range(100)]  # past the end of the file: a second epoch
    assert two[0].state()["epoch"] >= 1 and two[0].state() == two[1].state()

    before = [prepared.batches(2, rank, 2, seed=0) for rank in range(2)]
    seen = [step(before) for _ in range(7)]
    state = json.loads(json.dumps(before[0].state()))
    assert state["offset"] > 0 or state["document"] > 0
    one = prepared.batches(2, 0, 1, seed=0)
    one.restore(state)
    seen += [step([one], accum=2) for _ in range(93)]  # 1 worker, grad_accum 2: the same global batches
    assert seen == straight
    assert one.position_after(7 * 2) == state  # 7 steps of 2 micro-steps at world size 1


def test_a_stream_skips_its_validation_documents(tmp_path):
    from orchestrator.data.streaming import val_every

    cfg, prepared = _stream(tmp_path, "data.val_fraction=0.5")
    loader = prepared.batches(1, 0, 1, seed=0)
    assert val_every(0.5) == 2
    loader.next()
    documents = [row for row in loader._pending] + [(loader._document, None)]
    assert all(index % 2 == 1 for index, _ in documents if index < loader._read_from)


def test_train_epochs_become_the_steps_that_pass_over_the_training_rows(tmp_path, capsys):
    from orchestrator.train.driver import _steps_for_epochs

    path = _write(tmp_path, "jsonl")
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=body", "data.vocab_size=300",
                   "train.seq_len=32", "train.micro_batch_size=4", "cluster.num_workers=2", "train.epochs=2.5"])
    rows = prepare(cfg.data, 32, seed=0).meta["train_blocks"]
    assert _steps_for_epochs(cfg).train.max_steps == -(-rows * 5 // (2 * 8))
    assert f"train.epochs=2.5: {rows:,} training rows / global batch 8 -> train.max_steps=" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "content", "message"), [
    ("corpus.txt", bytes(range(128, 256)) * 20, "not UTF-8 text (byte 0, line 1): a binary file, or another encoding"),
    ("rows.jsonl", b'{"text": "a"}\n\n{"text": "b"}\n{"text": oops}\n', "invalid JSON on line 4: Expecting value"),
    ("rows.json", b'[\n {"text": "a"},\n {"text": "b"\n]\n', "invalid JSON on line 4: Expecting ',' delimiter"),
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"\n   \n\n", "holds only blank lines"),
    ("rows.parquet", b"not parquet at all", "not a Parquet file"),
], ids=["binary-txt", "broken-jsonl-line", "broken-json-array", "empty", "blank", "not-parquet"])
def test_an_unreadable_data_file_is_refused_in_one_line_writing_nothing(tmp_path, capsys, monkeypatch, name,
                                                                        content, message):
    from orchestrator import cli

    (tmp_path / name).write_bytes(content)
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path / "cache"))
    assert cli.main(["train", "data=local", f"data.path={tmp_path / name}", f"run_dir={tmp_path / 'run'}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors == [f"error: data.path={tmp_path / name}: {message}"] or (
        len(errors) == 1 and errors[0].startswith(f"error: data.path={tmp_path / name}: {message}")), errors
    assert not (tmp_path / "run").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no half-built entry, no lock file


@pytest.mark.parametrize("damage", ["truncated-shard", "lost-index"])
def test_a_damaged_cache_entry_is_built_again_not_read(tmp_path, capsys, damage):
    path = _write(tmp_path, "jsonl")
    cfg = compose(["data=local", f"data.path={path}", "data.text_field=body", "data.vocab_size=300",
                   "train.seq_len=32"])
    built = prepare(cfg.data, 32, seed=0)
    shard = (built.root / "tokens.bin").read_bytes()
    if damage == "truncated-shard":
        (built.root / "tokens.bin").write_bytes(shard[: len(shard) // 2])
    else:
        (built.root / "val.idx.npy").unlink()
    capsys.readouterr()
    again = prepare(cfg.data, 32, seed=0)
    assert "building it again" in capsys.readouterr().out
    assert (again.root / "tokens.bin").read_bytes() == shard and (again.root / "val.idx.npy").is_file()
    assert len(again.blocks("val")) == built.meta["val_blocks"]
