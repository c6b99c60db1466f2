"""A student initialised from its teacher (`distill.init=teacher_layers`): the teacher's architecture keeping
layers 0, k, 2k, ... (DistilBERT's and Minitron's depth pruning), with the teacher's embeddings, final norm and
head. Written once by the driver as an ordinary model folder in the data cache, so every worker then loads it
like any pretrained model (partitioned at ZeRO-3). The tensors are copied one by one from the teacher's
safetensors files; the teacher is never built.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from orchestrator.config import model_folder
from orchestrator.config.distill_checks import teacher_layers

_LAYER = re.compile(r"(^|\.)(h|layers|layer)\.(\d+)\.")
"""A tensor inside the numbered transformer blocks (GPT-2's `h.3.`, Llama's `layers.3.`, BERT's `layer.3.`)."""

_COPIED = ("generation_config.json", *model_folder.TOKENIZER_FILES, "special_tokens_map.json", "merges.txt",
           "chat_template.jinja")


def student_folder(teacher: Path, stride: int, cache_dir: Path) -> Path:
    """The student's folder for this teacher and stride, written on first use."""
    weights = model_folder.safetensors_files(teacher)
    if not weights:
        raise ValueError(f"{teacher}: distill.init=teacher_layers reads the teacher's safetensors files; it has none")
    key = hashlib.sha256(json.dumps([str(teacher.resolve()), stride, [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                                                       for p in weights]]).encode()).hexdigest()[:16]
    folder = cache_dir / "students" / f"every{stride}-{key}"
    if not (folder / "config.json").is_file():
        _write(teacher, stride, weights, folder)
    return folder


def kept_name(name: str, stride: int) -> str | None:
    """The student's name for a teacher tensor: renumbered when its layer is kept, None when it is dropped."""
    found = _LAYER.search(name)
    if found is None:
        return name
    index = int(found.group(3))
    if index % stride:
        return None
    return f"{name[:found.start(3)]}{index // stride}{name[found.end(3):]}"


def _write(teacher: Path, stride: int, weights: list[Path], folder: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    partial = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tensors = {}
    for path in weights:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if (student_name := kept_name(name, stride)) is not None:
                    tensors[student_name] = f.get_tensor(name)
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    layers = teacher_layers(teacher)
    config = json.loads((teacher / "config.json").read_text())
    for key, value in list(config.items()):
        if key in ("num_hidden_layers", "n_layer", "num_layers"):
            config[key] = -(-layers // stride)
        elif isinstance(value, list) and len(value) == layers:  # per-layer settings (layer_types)
            config[key] = value[::stride]
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    for name in _COPIED:
        if (teacher / name).is_file():
            shutil.copy2(teacher / name, partial / name)
    try:
        partial.rename(folder)
    except OSError:  # another driver wrote it first
        shutil.rmtree(partial, ignore_errors=True)
