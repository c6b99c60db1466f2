"""The data files read before anything is built from them: a file that cannot be parsed is named in one line,
with the line (or byte) where it breaks and what is wrong, instead of a reader's traceback from deep inside
`datasets` after the cache entry was started. Each file is read once, in chunks (large corpora are read as fast
as the disk allows; nothing is kept), and only when its cache entry does not exist yet.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from orchestrator.config.schema import DataFormat

_CHUNK = 1 << 20


def problems(files: list[str], fmt: DataFormat, named: str, key: str = "data.path") -> list[str]:
    """One line per file that cannot be read as `fmt` (text, json/jsonl, parquet); `named` is the path the
    config gave (`key`=named), a file or a folder or a pattern of them."""
    found = []
    for path in files:
        problem = _parquet(path) if fmt is DataFormat.parquet else _text(path, json_lines=fmt is DataFormat.json)
        if problem:
            where = "" if Path(named).expanduser() == Path(path) else f" {path}:"
            found.append(f"{key}={named}:{where} {problem}")
    return found


def _text(path: str, json_lines: bool) -> str | None:
    """UTF-8 throughout, not empty or blank; with `json_lines`, valid JSON Lines, or one JSON array."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = JsonLines() if json_lines else None
    line, offset, blank = 1, 0, True
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as error:
                line += chunk[:error.start].count(b"\n")
                return (f"not UTF-8 text (byte {offset + error.start:,}, line {line}): a binary file, or another "
                        "encoding")
            if "\x00" in text:
                return f"not text: it holds NUL bytes (line {line + text[:text.index(chr(0))].count(chr(10))})"
            if blank and text.strip() and lines is not None and text.lstrip()[0] == "[":
                return _json_document(path)  # a JSON array: one document, parsed whole
            blank = blank and not text.strip()
            problem = lines.feed(text) if lines is not None else None
            if problem:
                return problem
            line += text.count("\n")
            offset += len(chunk)
    if blank:
        return "is empty" if offset == 0 else "holds only blank lines"
    return lines.feed("\n") if lines is not None else None


class JsonLines:
    """JSON Lines fed in pieces: the first line that is not a JSON value, by its number in the file."""

    def __init__(self) -> None:
        self.pending, self.number = "", 1  # the unfinished last line, and its number

    def feed(self, text: str) -> str | None:
        *complete, self.pending = (self.pending + text).split("\n")
        for i, raw in enumerate(complete):
            if raw.strip():
                try:
                    json.loads(raw)
                except json.JSONDecodeError as error:
                    return f"invalid JSON on line {self.number + i}: {error.msg} (column {error.colno})"
        self.number += len(complete)
        return None


def _json_document(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except json.JSONDecodeError as error:
        return f"invalid JSON on line {error.lineno}: {error.msg} (column {error.colno})"
    return None


def _parquet(path: str) -> str | None:
    import pyarrow.parquet as pq

    if Path(path).stat().st_size == 0:
        return "is empty"
    try:
        if pq.ParquetFile(path).metadata.num_rows == 0:
            return "holds no rows"
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError... for a file that is not Parquet
        return f"not a Parquet file ({str(error).splitlines()[0]})"
    return None
