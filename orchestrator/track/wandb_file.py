"""Read the history of an offline W&B run straight from its `.wandb` file.

wandb 0.31 ships no Python reader for its transaction log, so this decodes the format
(LevelDB-style log blocks holding `Record` protobufs) to let `compare` and the tests read
offline runs without a W&B server.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")  # crc32, length, record type
_FILE_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    ident, magic, _version = _FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B transaction log")
    pos, pending = _FILE_HEADER.size, b""
    while pos + _HEADER.size <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER.size:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = _HEADER.unpack_from(data, pos)
        pos += _HEADER.size
        chunk, pos = data[pos : pos + length], pos + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
        else:
            break  # zero padding at the end of a file still being written


def run_file(run_dir: Path) -> Path:
    """The single .wandb file of a run directory's W&B run (error if there are several runs)."""
    files = sorted(Path(run_dir, "wandb").glob("*run-*/run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one W&B run under {run_dir}/wandb, found {len(files)}")
    return files[0]


def read_history(path: Path) -> tuple[str, list[dict]]:
    """(run id, one dict per logged step) from a .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_id, history = "", []
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
    return run_id, history
