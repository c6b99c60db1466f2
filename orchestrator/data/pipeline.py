"""Documents -> tokens -> packed `seq_len` blocks -> train/val split, cached between runs.

`prepare` is idempotent and safe to call from many processes at once (a file lock guards the
cache entry): the driver calls it first so problems surface before Ray starts and the
tokenizer is trained once; workers call it again and simply load the cached result (on a
multi-node cluster without a shared cache, each node builds the same entry itself).
The cache key covers the input files (path, size, mtime) and every setting that changes the
output, so an edit to either rebuilds it. The split depends on the seed and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.schema import DataConfig
from orchestrator.data.corpus import file_format, load_documents, source_files
from orchestrator.errors import ConfigError

_FORMAT_VERSION = 1  # bump when the prepared layout or tokenization changes


@dataclass(frozen=True)
class PreparedData:
    root: Path

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def meta(self) -> dict:
        return json.loads((self.root / "meta.json").read_text())

    def split(self, name: str):
        """The `train` or `val` split: a datasets.Dataset of `input_ids` rows of seq_len tokens."""
        from datasets import load_from_disk

        return load_from_disk(str(self.root / name))

    def blocks(self, name: str):
        """The `train` or `val` split as one int64 tensor [n_blocks, seq_len], held in memory."""
        return self.split(name).with_format("torch")[:]["input_ids"]


def cache_key(data: DataConfig, seq_len: int, seed: int) -> str:
    files = source_files(data)
    fingerprint = {
        "version": _FORMAT_VERSION,
        "files": [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files],
        "format": file_format(data, files).value if files else None,
        "text_field": data.text_field,
        "tokenizer": str(Path(data.tokenizer_path).resolve()) if data.tokenizer_path else data.vocab_size,
        "seq_len": seq_len,
        "val_fraction": data.val_fraction,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def prepare(data: DataConfig, seq_len: int, seed: int) -> PreparedData:
    """Build (or reuse) the tokenizer and the packed train/val splits for this config."""
    from filelock import FileLock

    cache = Path(data.cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    key = cache_key(data, seq_len, seed)
    prepared = PreparedData(cache / f"{data.name}-{key}")
    with FileLock(str(prepared.root) + ".lock"):
        if not (prepared.root / "meta.json").exists():
            _build(data, seq_len, seed, prepared)
    return prepared


def _build(data: DataConfig, seq_len: int, seed: int, out: PreparedData) -> None:
    import shutil

    from orchestrator.data.tokenizer import load_tokenizer, train_bpe

    docs = load_documents(data)
    if len(docs) == 0:
        raise ConfigError([f"data.path={data.path}: holds no documents"])
    if data.tokenizer_path:
        tokenizer = load_tokenizer(data.tokenizer_path)
    else:
        print(f"training a byte-level BPE tokenizer (vocab {data.vocab_size}) on {len(docs)} documents",
              flush=True)
        tokenizer = train_bpe((row["text"] for row in docs), data.vocab_size)
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [row + [eos] for row in ids]}

    def pack(batch: dict) -> dict:
        # Concatenate documents (EOS-separated) and cut into full blocks; the tail is dropped.
        flat = [t for row in batch["ids"] for t in row]
        usable = len(flat) - len(flat) % seq_len
        return {"input_ids": [flat[i : i + seq_len] for i in range(0, usable, seq_len)]}

    tokens = docs.map(tokenize, batched=True, remove_columns=docs.column_names, num_proc=data.num_proc,
                      desc="tokenizing")
    blocks = tokens.map(pack, batched=True, batch_size=1000, remove_columns=["ids"], num_proc=data.num_proc,
                        desc=f"packing into {seq_len}-token blocks")
    n_val = max(1, round(len(blocks) * data.val_fraction))
    if len(blocks) - n_val < 2:
        raise ConfigError([f"data.path={data.path}: only {len(blocks)} blocks of train.seq_len={seq_len} "
                           "tokens; use more text or a shorter train.seq_len"])
    split = blocks.train_test_split(test_size=n_val, seed=seed, shuffle=True)

    tmp = out.root.with_name(out.root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    split["train"].save_to_disk(str(tmp / "train"))
    split["test"].save_to_disk(str(tmp / "val"))
    meta = {
        "vocab_size": len(tokenizer),
        "eos_token_id": eos,
        "documents": len(docs),
        "tokens": len(blocks) * seq_len,
        "seq_len": seq_len,
        "train_blocks": len(split["train"]),
        "val_blocks": len(split["test"]),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out.root, ignore_errors=True)
    tmp.rename(out.root)  # the entry appears whole or not at all
