"""Which documents to train on: the built-in offline corpus or the user's files, read by `datasets`.

The default corpus is the Python standard library's own top-level modules: real text that is
present, byte for byte, on every machine with the same Python, so runs are reproducible
without any download.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from orchestrator.config.schema import DataConfig, DataFormat
from orchestrator.config.validate import data_files
from orchestrator.errors import ConfigError

_FORMAT_BY_SUFFIX = {
    ".txt": DataFormat.text,
    ".md": DataFormat.text,
    ".text": DataFormat.text,
    ".py": DataFormat.text,
    ".jsonl": DataFormat.json,
    ".json": DataFormat.json,
    ".parquet": DataFormat.parquet,
}


def stdlib_files() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [str(f) for f in sorted(root.glob("*.py"))]


def source_files(data: DataConfig) -> list[str]:
    """The files this data config reads, in a fixed order."""
    files = stdlib_files() if data.path is None else data_files(data.path)
    if data.max_bytes is not None:
        # Whole files until the byte budget is spent, so the corpus is a stable prefix.
        kept, total = [], 0
        for f in files:
            if total >= data.max_bytes:
                break
            kept.append(f)
            total += Path(f).stat().st_size
        files = kept
    return files


def file_format(data: DataConfig, files: list[str]) -> DataFormat:
    if data.format is not DataFormat.auto:
        return data.format
    formats = {_FORMAT_BY_SUFFIX.get(Path(f).suffix, DataFormat.text) for f in files}
    if len(formats) > 1:
        kinds = ", ".join(sorted(f.value for f in formats))
        raise ConfigError([f"data.path={data.path}: mixes {kinds} files; set data.format or split them"])
    return formats.pop()


def load_documents(data: DataConfig, streaming: bool = False):
    """A datasets.Dataset with one `text` column, one row per document (text files: one per file); with
    `streaming`, an IterableDataset that reads the files as it is iterated (local paths here; remote URLs
    take the same path)."""
    files = source_files(data)
    fmt = file_format(data, files)
    if fmt is DataFormat.text:
        return _quietly_load("text", data_files=files, sample_by="document", split="train", streaming=streaming)
    ds = _quietly_load(fmt.value, data_files=files, split="train", streaming=streaming)
    columns = ds.column_names if not streaming else list(next(iter(ds)).keys())
    if data.text_field not in columns:
        raise ConfigError([f"data.text_field={data.text_field}: no such column in {data.path}; "
                           f"columns are {', '.join(columns)}"])
    ds = ds.select_columns([data.text_field])
    if data.text_field != "text":
        ds = ds.rename_column(data.text_field, "text")
    return ds


def _quietly_load(builder: str, **kwargs):
    """datasets' load_dataset without its "Downloading data" and "Generating train split" bars: the files are
    local, nothing downloads, and the preparation prints its own progress. Its other bars (tokenizing) stay."""
    import datasets

    shown = datasets.utils.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, **kwargs)
    finally:
        if shown:
            datasets.enable_progress_bars()
