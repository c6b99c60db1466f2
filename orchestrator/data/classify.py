"""Labelled text -> tokenized rows for sequence classification, cached between runs.

Rows come from JSONL, JSON or Parquet files (read as for SFT, data/sft.py, so a malformed file is refused naming
its line): `data.text_field`, an optional `data.text_pair_field`, and `data.label_field`. The label set is the
training rows' distinct values in a stable order (numbers numerically, strings alphabetically) and becomes the
model's id2label. Validation rows come from `data.val_path`, else a `data.val_fraction` held out stratified by
label (scikit-learn's train_test_split); test rows from `data.test_path`, if given.

Each row is [4, seq_len] int32 channels: token ids, token types (the second text of a pair), 1 on real tokens,
and the label id at position 0. Rows longer than `train.seq_len` are truncated (counted); a batch is cut to its
longest row by the task. Without a tokenizer (an encoder built from its config) a WordPiece is trained on the
training texts. The entry is keyed on the files, the tokenizer's files and every setting that changes the rows,
and written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from orchestrator.config.schema import Config, DataConfig
from orchestrator.config.validate import data_files
from orchestrator.data.cache import build_once, seal
from orchestrator.data.pipeline import RowsEntry, tokenizer_fingerprint
from orchestrator.data.sft import read_rows
from orchestrator.errors import ConfigError

_FORMAT_VERSION = 2  # 2: meta.json records its files' sizes (data/cache.py)
CHANNELS = ("input_ids", "token_type_ids", "attended", "label")
INPUT_IDS, TOKEN_TYPES, ATTENDED, LABEL = range(len(CHANNELS))
NO_LABEL = -100
"""The label of a row that only pads an evaluation batch (tasks/classify.py leaves it out of every figure)."""
SPLITS = ("train", "val", "test")


class LabelledRows(RowsEntry):
    """A prepared classification entry (`train`, `val` and `test` rows of [4, seq_len]): the same reading
    interface as the pretraining pipeline's PreparedData."""

    def describe(self, total_tokens: int) -> list[str]:
        m = self.meta
        counts = " / ".join(f"{m['rows'][name]:,} {name}" for name in SPLITS if m["rows"].get(name))
        return [f"  {counts} rows, {len(m['labels'])} labels ({', '.join(m['labels'][:8])}"
                f"{', ...' if len(m['labels']) > 8 else ''}), {m['truncated']} truncated at "
                f"train.seq_len={m['seq_len']}"]


def prepare(cfg: Config) -> LabelledRows:
    """Build (or reuse) the tokenized rows of cfg's labelled files."""
    data = cfg.data
    cache = Path(data.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    prepared = LabelledRows(cache / f"classify-{_key(data, cfg.train.seq_len, cfg.train.seed)}", data)
    build_once(prepared.root, list, lambda: _build(data, cfg.train.seq_len, cfg.train.seed, prepared))
    return prepared  # read_rows (data/sft.py) refuses a malformed file itself, naming its line


def _key(data: DataConfig, seq_len: int, seed: int) -> str:
    paths = (data.path, data.val_path, data.test_path)
    files = [f for path in paths if path for f in data_files(path)]
    fingerprint = {
        "version": _FORMAT_VERSION,
        "files": [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files],
        "paths": paths,
        "tokenizer": (tokenizer_fingerprint(Path(data.tokenizer_path).expanduser()) if data.tokenizer_path
                      else ["wordpiece", data.vocab_size]),
        "fields": (data.text_field, data.text_pair_field, data.label_field),
        "seq_len": seq_len,
        "val_fraction": data.val_fraction,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def read_labelled(path: str, data: DataConfig) -> list[tuple[str, str, str | None, str | int]]:
    """(where, text, pair text, label) of every row at `path`. Refused in one line: a field no row of a file has
    (naming the fields it has), the first row missing a field (naming its line), a label that is neither a string
    nor an integer, a text that is no string."""
    keys = {data.text_field: "data.text_field", data.label_field: "data.label_field"}
    if data.text_pair_field:
        keys[data.text_pair_field] = "data.text_pair_field"
    labelled = []
    for file in data_files(path):
        rows = list(read_rows(file))
        for where, row in rows:
            if not isinstance(row, dict):
                raise ConfigError([f"{where}: a row is a JSON object, not {type(row).__name__}"])
        for field, key in keys.items():
            if not any(field in row for _, row in rows):
                found = sorted({name for _, row in rows for name in row})
                raise ConfigError([f"{key}={field}: no row of {file} has it; its fields are {', '.join(found)}"])
            where = next((where for where, row in rows if field not in row), None)
            if where is not None:
                raise ConfigError([f"{where}: no `{field}` field ({key})"])
        for where, row in rows:
            label, text, pair = row[data.label_field], row[data.text_field], row.get(data.text_pair_field or "")
            if isinstance(label, bool) or not isinstance(label, (str, int)):
                raise ConfigError([f"{where}: label {label!r} is neither a string nor an integer"])
            if not isinstance(text, str) or (data.text_pair_field and not isinstance(pair, str)):
                raise ConfigError([f"{where}: the text fields must hold strings"])
            labelled.append((where, text, pair if data.text_pair_field else None, label))
    if not labelled:
        raise ConfigError([f"{path}: holds no rows"])
    return labelled


def label_names(train: list) -> list:
    """The training rows' distinct labels in a stable order: numbers numerically, strings alphabetically."""
    labels = {row[3] for row in train}
    if len(labels) < 2:
        raise ConfigError([f"data.label_field: every training row has the label {next(iter(labels))!r}; "
                           "classification needs at least two"])
    if len({type(label) for label in labels}) > 1:
        raise ConfigError(["data.label_field: the labels mix strings and integers; use one kind"])
    return sorted(labels)


def _split(data: DataConfig, seed: int) -> dict[str, list]:
    """The train, validation (its file, else a stratified hold-out) and test rows."""
    from sklearn.model_selection import train_test_split

    train = read_labelled(data.path, data)
    if data.val_path:
        val = read_labelled(data.val_path, data)
    else:
        labels = [row[3] for row in train]
        stratify = labels if min(labels.count(label) for label in set(labels)) >= 2 else None
        try:
            train, val = train_test_split(train, test_size=data.val_fraction, random_state=seed, stratify=stratify)
        except ValueError as error:  # too few rows for the fraction, or for one row of each label
            raise ConfigError([f"data.val_fraction={data.val_fraction}: {error}"]) from None
    return {"train": train, "val": val, "test": read_labelled(data.test_path, data) if data.test_path else []}


def _build(data: DataConfig, seq_len: int, seed: int, out: LabelledRows) -> None:
    import shutil

    from orchestrator.data.tokenizer import load_tokenizer, train_wordpiece

    splits = _split(data, seed)
    labels = label_names(splits["train"])
    ids = {label: i for i, label in enumerate(labels)}
    for name in ("val", "test"):
        unseen = next(((where, label) for where, _, _, label in splits[name] if label not in ids), None)
        if unseen:
            raise ConfigError([f"{unseen[0]}: label {unseen[1]!r} never appears in the training rows (labels: "
                               f"{', '.join(map(str, labels))})"])
    if data.tokenizer_path:
        tokenizer = load_tokenizer(data.tokenizer_path)
    else:
        texts = [text for _, text, pair, _ in splits["train"] for text in (text, pair) if text]
        tokenizer = train_wordpiece(texts, data.vocab_size)
    tmp = out.root.with_name(out.root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    truncated = 0
    for name, rows in splits.items():
        encoded, cut = _encode(tokenizer, rows, ids, seq_len)
        truncated += cut
        np.save(tmp / f"rows-{name}.npy", encoded)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    train_labels = [ids[row[3]] for row in splits["train"]]
    meta = {
        "labels": [str(label) for label in labels],
        "label_counts": np.bincount(train_labels, minlength=len(labels)).tolist(),
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id,
        "dtype": "int32",
        "seq_len": seq_len,
        "rows": {name: len(rows) for name, rows in splits.items()},
        "train_blocks": len(splits["train"]),
        "val_blocks": len(splits["val"]),
        "truncated": truncated,
        "streaming": False,
        "sources": [],
    }
    seal(tmp, meta, out.root)


def _encode(tokenizer, rows: list, ids: dict, seq_len: int) -> tuple[np.ndarray, int]:
    """[rows, 4, seq_len] int32 and how many rows were cut to seq_len."""
    out = np.zeros((len(rows), len(CHANNELS), seq_len), dtype=np.int32)
    if not rows:
        return out, 0
    texts, pairs = [row[1] for row in rows], [row[2] for row in rows]
    pairs = pairs if pairs[0] is not None else None
    full = tokenizer(texts, pairs, truncation=False)["input_ids"]
    cut = tokenizer(texts, pairs, truncation=True, max_length=seq_len, return_token_type_ids=True)
    out[:, INPUT_IDS] = tokenizer.pad_token_id
    for i, (tokens, types) in enumerate(zip(cut["input_ids"], cut["token_type_ids"], strict=True)):
        out[i, INPUT_IDS, :len(tokens)], out[i, TOKEN_TYPES, :len(types)] = tokens, types
        out[i, ATTENDED, :len(tokens)] = 1
        out[i, LABEL, 0] = ids[rows[i][3]]
    return out, sum(len(tokens) > seq_len for tokens in full)
