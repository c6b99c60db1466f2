"""Chat and prompt/completion samples -> rendered, masked rows of `train.seq_len`, packed, cached between runs.

A sample is a `messages` list of {role, content} (roles: system, user, assistant), or `prompt` and `completion`
(strings, made a user turn and an assistant turn; or message lists). Files are JSONL, JSON or Parquet; the form
is found from the fields, else refused naming the fields found. Each sample is rendered by the chat template
(data/chat.py) into token ids and the mask of the tokens the loss counts.

Packing (data.packing, on by default): samples go into rows of `seq_len` by TRL's best-fit-decreasing packer,
each row storing four channels: token ids; labels (the id where the loss counts, else -100, and -100 at every
sample's first token, which nothing before it in the row may predict); position ids that restart at 0 at each
sample, so transformers' attention never crosses a sample boundary (a block-diagonal mask with SDPA or eager
attention, variable-length kernels with flash attention); and 1 on real tokens, 0 on padding. Without packing a
row holds one sample; the task trims a batch to its longest sample.

The entry (`rows-train.npy`, `rows-val.npy`, the tokenizer with its template, meta.json) is keyed on the files,
the tokenizer's files, the template and every setting that changes the rows, and written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from orchestrator.config.schema import Config, DataConfig, Truncation
from orchestrator.config.validate import data_files
from orchestrator.data import chat
from orchestrator.data.cache import build_once, seal
from orchestrator.data.pipeline import RowsEntry, tokenizer_fingerprint
from orchestrator.errors import ConfigError

_FORMAT_VERSION = 2  # 2: meta.json records its files' sizes (data/cache.py)
IGNORE = -100
CHANNELS = ("input_ids", "labels", "position_ids", "attended")
INPUT_IDS, LABELS, POSITIONS, ATTENDED = range(len(CHANNELS))
"""A row's channels, in this order (tasks/sft.py reads them by these names)."""


class PackedChats(RowsEntry):
    """A prepared SFT entry (`train` and `val` rows of [4, seq_len]): the same reading interface as the
    pretraining pipeline's PreparedData."""

    def describe(self, total_tokens: int) -> list[str]:
        m = self.meta
        return [f"  {m['samples']['train']:,} train / {m['samples']['val']:,} val samples "
                f"({m['truncated']} truncated, {m['dropped']} dropped at train.seq_len={m['seq_len']}), "
                f"{'packed' if m['packing'] else 'one a row'}: {m['packing_efficiency']:.1%} of the rows' tokens are "
                f"samples, {m['loss_tokens']['train']:,} train tokens in the loss"]


def prepare(cfg: Config) -> PackedChats:
    """Build (or reuse) the rows of cfg's samples, rendered by its tokenizer and chat template."""
    data = cfg.data
    cache = Path(data.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer, template, added = _tokenizer(data)
    prepared = PackedChats(cache / f"sft-{cache_key(data, template, cfg.train.seq_len, cfg.train.seed)}", data)

    def build() -> None:
        if added:
            print(f"chat template: added {', '.join(added)} to the tokenizer (the embeddings grow to match)",
                  flush=True)
        _build(data, tokenizer, cfg.train.seq_len, cfg.train.seed, prepared)

    build_once(prepared.root, list, build)  # read_rows refuses a malformed file itself, naming its line
    return prepared


def _tokenizer(data: DataConfig):
    from orchestrator.data.tokenizer import load_tokenizer

    if data.tokenizer_path is None:
        raise ConfigError(["model.pretrained_path: task=sft fine-tunes a model folder with its tokenizer; set it "
                           "(or data.tokenizer_path)"])
    tokenizer = load_tokenizer(data.tokenizer_path)
    template = chat.template_text(data.chat_template, tokenizer)
    return tokenizer, template, chat.add_template_tokens(tokenizer, template)


def cache_key(data: DataConfig, template: str | None, seq_len: int, seed: int,
              version: int = _FORMAT_VERSION) -> str:
    """The entry's name: its files, tokenizer, template and every setting that changes its rows."""
    files = [f for path in (data.path, data.val_path) if path for f in data_files(path)]
    fingerprint = {
        "version": version,
        "files": [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files],
        "val_path": data.val_path,
        "tokenizer": tokenizer_fingerprint(Path(data.tokenizer_path).expanduser()),
        "template": template,
        "seq_len": seq_len,
        "packing": data.packing,
        "truncation": data.truncation.value,
        "val_fraction": data.val_fraction,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def read_samples(path: str) -> list[tuple[str, list[dict]]]:
    """(where, conversation) of every sample in the file(s) at `path`; a malformed file or sample is refused in
    one line naming the file and line."""
    samples = []
    for file in data_files(path):
        for where, row in read_rows(file):
            samples.append((where, conversation(row, where)))
    if not samples:
        raise ConfigError([f"data.path={path}: holds no samples"])
    return samples


def read_rows(file: str):
    """(where, row) of every row of a JSONL, JSON or Parquet file; a malformed file refused naming its line."""
    if file.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as error:  # pyarrow's errors share no base class worth naming
            raise ConfigError([f"{file}: not a readable Parquet file ({str(error).splitlines()[0]})"]) from None
        yield from ((f"{file} row {i + 1}", row) for i, row in enumerate(rows))
        return
    text = Path(file).read_text(errors="replace")
    if file.endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError([f"{file} line {error.lineno}: not valid JSON ({error.msg})"]) from None
        yield from ((f"{file} item {i + 1}", row) for i, row in enumerate(rows))
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError([f"{file} line {number}: not valid JSON ({error.msg}); a sample is one JSON object "
                               "a line"]) from None
        yield f"{file} line {number}", row


def conversation(row, where: str) -> list[dict]:
    """The sample as messages: `messages` as they are, or `prompt`/`completion` as a user and an assistant turn."""
    if not isinstance(row, dict):
        raise ConfigError([f"{where}: a sample is a JSON object, not {type(row).__name__}"])
    if "messages" in row:
        messages = row["messages"]
    elif "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        messages = [*(prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]),
                    *(completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}])]
    else:
        raise ConfigError([f"{where}: neither `messages` nor `prompt` and `completion`; its fields are "
                           f"{', '.join(row) or 'none'}"])
    if not isinstance(messages, list) or not messages:
        raise ConfigError([f"{where}: `messages` must be a non-empty list of {{role, content}}"])
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ConfigError([f"{where}: every message needs a `role` and a string `content`"])
        if message.get("role") not in chat.ROLES:
            raise ConfigError([f"{where}: unknown role {message.get('role')!r}; roles are {', '.join(chat.ROLES)}"])
    if not any(message["role"] == "assistant" for message in messages):
        raise ConfigError([f"{where}: no assistant message, so nothing to learn"])
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def _build(data: DataConfig, tokenizer, seq_len: int, seed: int, out: PackedChats) -> None:
    import shutil

    train, val = train_and_val(data, seed, read_samples)
    tmp = out.root.with_name(out.root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {"truncated": 0, "dropped": 0}
    meta_rows, samples, loss_tokens, real = {}, {}, {}, {}
    for name, split in (("train", train), ("val", val)):
        encoded = [_encode(tokenizer, messages, seq_len, data.truncation, counts) for _, messages in split]
        encoded = [sample for sample in encoded if sample is not None]
        if not encoded:
            raise ConfigError([f"data.{'path' if name == 'train' else 'val_path'}: no {name} sample has a reply "
                               f"within train.seq_len={seq_len} tokens"])
        rows = _rows_of(encoded, seq_len, data.packing, tokenizer.pad_token_id)
        np.save(tmp / f"rows-{name}.npy", rows)
        meta_rows[name], samples[name] = len(rows), len(encoded)
        loss_tokens[name] = int((rows[:, LABELS] != IGNORE).sum())
        real[name] = int(rows[:, ATTENDED].sum())
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    meta = {
        "vocab_size": len(tokenizer),
        "eos_token_id": chat.end_of_turn(tokenizer),
        "dtype": "int32",
        "seq_len": seq_len,
        "train_blocks": meta_rows["train"],
        "val_blocks": meta_rows["val"],
        "samples": samples,
        "loss_tokens": loss_tokens,
        "packing": data.packing,
        "packing_efficiency": real["train"] / (meta_rows["train"] * seq_len),
        **counts,
        "streaming": False,
        "sources": [],
    }
    seal(tmp, meta, out.root)


def train_and_val(data: DataConfig, seed: int, read) -> tuple[list, list]:
    """`read(path)`'s samples of data.path and data.val_path, or data.val_fraction of data.path's held out (a
    seeded draw, the rest kept in file order)."""
    train = read(data.path)
    if data.val_path:
        return train, read(data.val_path)
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, round(len(train) * data.val_fraction))
    if len(train) - n_val < 1:
        raise ConfigError([f"data.path={data.path}: {len(train)} samples leave none to train on after "
                           f"data.val_fraction={data.val_fraction}"])
    return [train[i] for i in sorted(order[n_val:])], [train[i] for i in order[:n_val]]


def _encode(tokenizer, messages: list[dict], seq_len: int, truncation: Truncation, counts: dict):
    """(ids, labels) of one sample, cut to seq_len or None (dropped, or no reply token left)."""
    ids, mask = chat.render(tokenizer, messages)
    if len(ids) > seq_len:
        if truncation is Truncation.drop:
            counts["dropped"] += 1
            return None
        counts["truncated"] += 1
        ids, mask = ids[:seq_len], mask[:seq_len]
    labels = [token if counted else IGNORE for token, counted in zip(ids, mask, strict=True)]
    labels[0] = IGNORE  # nothing in the sample precedes it
    if all(label == IGNORE for label in labels):
        counts["dropped"] += 1
        return None
    return ids, labels


def _rows_of(samples: list[tuple[list[int], list[int]]], seq_len: int, packing: bool, pad: int) -> np.ndarray:
    """[rows, 4, seq_len] int32: samples packed best-fit-decreasing (TRL), or one a row; padding after."""
    if packing:
        from datasets import Dataset
        from trl.data_utils import pack_dataset

        packed = pack_dataset(Dataset.from_dict({"input_ids": [s[0] for s in samples],
                                                 "labels": [s[1] for s in samples]}), seq_len, strategy="bfd")
        rows = [(row["input_ids"], row["labels"], row["seq_lengths"]) for row in packed]
    else:
        rows = [(ids, labels, [len(ids)]) for ids, labels in samples]
    out = np.zeros((len(rows), len(CHANNELS), seq_len), dtype=np.int32)
    out[:, INPUT_IDS], out[:, LABELS] = pad, IGNORE
    for i, (ids, labels, lengths) in enumerate(rows):
        n = len(ids)
        out[i, INPUT_IDS, :n], out[i, LABELS, :n], out[i, ATTENDED, :n] = ids, labels, 1
        out[i, POSITIONS, :n] = np.concatenate([np.arange(length) for length in lengths])
        out[i, POSITIONS, n:] = np.arange(seq_len - n)  # padding: one more sequence of its own, never in the loss
    return out
