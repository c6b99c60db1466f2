"""Preference pairs -> two masked rows each (the chosen and the rejected response), cached between runs.

A row holds `prompt`, `chosen` and `rejected`: strings, or message lists. With a chat template (the tokenizer's,
or data.chat_template) the prompt is the conversation so far (a string is one user turn) and each response the
assistant's reply (a string is one assistant turn), rendered by the template (data/chat.py); without one, strings
are joined as they are, the response ended by the end-of-sequence token. Only the response's tokens are scored.

A pair is stored as [2, 4, seq_len] (chosen, then rejected; data/sft.py's four channels), never packed with
another pair: the task compares the two rows of a pair, so each row holds one sample, padded after it (the
task trims a batch to its longest row). A pair longer than train.seq_len is cut at the end of its response
(data.truncation=truncate; dropped when no response token is left) or dropped (drop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.config.schema import Config, DataConfig, Truncation
from orchestrator.config.validate import data_files
from orchestrator.data import chat
from orchestrator.data.cache import build_once, seal
from orchestrator.data.pipeline import RowsEntry
from orchestrator.data.sft import (
    ATTENDED,
    CHANNELS,
    IGNORE,
    INPUT_IDS,
    LABELS,
    POSITIONS,
    cache_key,
    conversation,
    read_rows,
    train_and_val,
)
from orchestrator.errors import ConfigError

_FORMAT_VERSION = 1
FIELDS = ("prompt", "chosen", "rejected")
CHOSEN, REJECTED = 0, 1


class PreferencePairs(RowsEntry):
    """A prepared DPO entry (`train` and `val` rows of [2, 4, seq_len])."""

    def describe(self, total_tokens: int) -> list[str]:
        m = self.meta
        return [f"  {m['samples']['train']:,} train / {m['samples']['val']:,} val preference pairs "
                f"({m['truncated']} truncated, {m['dropped']} dropped at train.seq_len={m['seq_len']}), "
                f"{m['response_tokens']['train']:,} train response tokens scored"]


def prepare(cfg: Config) -> PreferencePairs:
    """Build (or reuse) the pairs of cfg's preference rows."""
    from orchestrator.data.tokenizer import load_tokenizer

    data = cfg.data
    if data.tokenizer_path is None:
        raise ConfigError(["model.pretrained_path: task=dpo aligns a model folder with its tokenizer; set it "
                           "(or data.tokenizer_path)"])
    tokenizer = load_tokenizer(data.tokenizer_path)
    template = None
    if data.chat_template is not None or tokenizer.chat_template:
        template = chat.template_text(data.chat_template, tokenizer)
        missing = chat.add_template_tokens(tokenizer, template)
        if missing:
            raise ConfigError([f"data.chat_template: writes {', '.join(missing)}, which the model's tokenizer lacks; "
                               "fine-tune it with task=sft on that template first (it adds them), then align that"])
    cache = Path(data.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    key = cache_key(data, template, cfg.train.seq_len, cfg.train.seed, version=_FORMAT_VERSION)
    prepared = PreferencePairs(cache / f"dpo-{key}", data)
    build_once(prepared.root, list, lambda: _build(data, tokenizer, template is not None, cfg.train.seq_len,
                                                   cfg.train.seed, prepared))
    return prepared


def read_pairs(path: str, chat_format: bool) -> list[tuple[str, list[dict], list[dict], list[dict]]]:
    """(where, prompt, chosen, rejected) of every row of the file(s) at `path`, as messages; a malformed row is
    refused in one line naming its file and line."""
    pairs = []
    for file in data_files(path):
        for where, row in read_rows(file):
            pairs.append((where, *_pair(row, where, chat_format)))
    if not pairs:
        raise ConfigError([f"data.path={path}: holds no preference rows"])
    return pairs


def _pair(row, where: str, chat_format: bool) -> tuple[list[dict], list[dict], list[dict]]:
    if not isinstance(row, dict) or any(field not in row for field in FIELDS):
        found = ", ".join(row) if isinstance(row, dict) and row else "none"
        raise ConfigError([f"{where}: a preference row needs `prompt`, `chosen` and `rejected`; its fields are "
                           f"{found}"])
    if not chat_format and not all(isinstance(row[field], str) for field in FIELDS):
        raise ConfigError([f"{where}: message lists need a chat template; the tokenizer has none: set "
                           "data.chat_template (chatml, or a Jinja file), or give strings"])
    prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
    responses = []
    for field in ("chosen", "rejected"):
        reply = row[field] if isinstance(row[field], list) else [{"role": "assistant", "content": row[field]}]
        responses.append(conversation({"messages": [*prompt, *reply]}, f"{where} ({field})")[len(prompt):])
    return prompt, responses[0], responses[1]


def _build(data: DataConfig, tokenizer, chat_format: bool, seq_len: int, seed: int, out: PreferencePairs) -> None:
    import shutil

    train, val = train_and_val(data, seed, lambda path: read_pairs(path, chat_format))
    tmp = out.root.with_name(out.root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {"truncated": 0, "dropped": 0}
    samples, scored, blocks = {}, {}, {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for name, split in (("train", train), ("val", val)):
        encoded = [_encode_pair(tokenizer, chat_format, prompt, chosen, rejected, seq_len, data.truncation, counts)
                   for _, prompt, chosen, rejected in split]
        encoded = [pair for pair in encoded if pair is not None]
        if not encoded:
            raise ConfigError([f"data.{'path' if name == 'train' else 'val_path'}: no {name} pair has a response "
                               f"within train.seq_len={seq_len} tokens"])
        rows = _rows_of(encoded, seq_len, pad)
        np.save(tmp / f"rows-{name}.npy", rows)
        samples[name] = blocks[name] = len(rows)
        scored[name] = int((rows[:, :, LABELS] != IGNORE).sum())
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    meta = {
        "vocab_size": len(tokenizer),
        "eos_token_id": chat.end_of_turn(tokenizer) if chat_format else tokenizer.eos_token_id,
        "dtype": "int32",
        "seq_len": seq_len,
        "train_blocks": blocks["train"],
        "val_blocks": blocks["val"],
        "samples": samples,
        "response_tokens": scored,
        **counts,
        "streaming": False,
        "sources": [],
    }
    seal(tmp, meta, out.root)


def _encode_pair(tokenizer, chat_format: bool, prompt: list[dict], chosen: list[dict], rejected: list[dict],
                 seq_len: int, truncation: Truncation, counts: dict):
    """((ids, labels) of the chosen row, of the rejected row), or None when the pair is dropped."""
    rows = []
    for response in (chosen, rejected):
        if chat_format:
            ids, mask = chat.render(tokenizer, [*prompt, *response], replies_from=len(prompt))
        else:
            context = tokenizer(prompt[0]["content"], add_special_tokens=False)["input_ids"]
            reply = tokenizer(response[0]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids, mask = context + reply, [0] * len(context) + [1] * len(reply)
        rows.append((ids, mask))
    if any(len(ids) > seq_len for ids, _ in rows):
        if truncation is Truncation.drop:
            counts["dropped"] += 1
            return None
        counts["truncated"] += 1
        rows = [(ids[:seq_len], mask[:seq_len]) for ids, mask in rows]
    encoded = []
    for ids, mask in rows:
        labels = [token if scored else IGNORE for token, scored in zip(ids, mask, strict=True)]
        labels[0] = IGNORE  # nothing precedes it
        if all(label == IGNORE for label in labels):
            counts["dropped"] += 1
            return None
        encoded.append((ids, labels))
    return encoded


def _rows_of(pairs: list, seq_len: int, pad: int) -> np.ndarray:
    """[pairs, 2, 4, seq_len] int32: each response after its prompt, padding after it (positions run on)."""
    out = np.zeros((len(pairs), 2, len(CHANNELS), seq_len), dtype=np.int32)
    out[:, :, INPUT_IDS], out[:, :, LABELS] = pad, IGNORE
    out[:, :, POSITIONS] = np.arange(seq_len)
    for i, pair in enumerate(pairs):
        for j, (ids, labels) in enumerate(pair):
            n = len(ids)
            out[i, j, INPUT_IDS, :n], out[i, j, LABELS, :n], out[i, j, ATTENDED, :n] = ids, labels, 1
    return out
