"""`task=distill`'s teacher, without torch: where it is (a run directory's model/ or a model folder), whether it
can teach (a causal LM with weights and a tokenizer), whether the student reads the data through the same
tokenizer, and what the student then is (the teacher's vocabulary; with distill.init=teacher_layers, the
teacher's shape with every k-th layer). The config checks refuse a teacher that cannot work before anything
starts; compose.py writes its tokenizer, vocabulary and student shape into the config the plan and workers read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from orchestrator.config import model_folder
from orchestrator.config.schema import Arch, Config, DistillInit, TaskName


def teacher_folder(cfg: Config) -> Path | None:
    """The teacher's model folder: a run directory's model/, or the folder named."""
    if cfg.distill.teacher_path is None:
        return None
    path = Path(cfg.distill.teacher_path).expanduser()
    return path / "model" if (path / "model" / "config.json").is_file() else path


def teacher_layers(folder: Path) -> int:
    c = model_folder.read_config(folder)
    return next(c[key] for key in ("num_hidden_layers", "n_layer", "num_layers") if c.get(key))


def teacher_params(cfg: Config) -> int:
    """The teacher's parameter count, for the plan's memory (0 without task=distill, or when unreadable)."""
    folder = teacher_folder(cfg)
    if cfg.task.name is not TaskName.distill or folder is None or not (folder / "config.json").is_file():
        return 0
    return model_folder.parameter_count(folder) or 0


def problems(cfg: Config) -> list[str]:
    """distill.*'s problems, one line each (none unless task=distill, where teacher_path is required)."""
    d, folder = cfg.distill, teacher_folder(cfg)
    if cfg.task.name is not TaskName.distill:
        return [] if d.teacher_path is None else [
            f"distill.teacher_path={d.teacher_path}: only task=distill has a teacher"]
    found = []
    if d.temperature <= 0:
        found.append(f"distill.temperature={d.temperature}: must be > 0")
    if not 0 <= d.alpha <= 1:
        found.append(f"distill.alpha={d.alpha}: must be in [0, 1] (the distillation loss's weight)")
    if d.layer_stride < 1:
        found.append(f"distill.layer_stride={d.layer_stride}: must be >= 1")
    if cfg.model.arch is Arch.bert and cfg.model.pretrained_path is None:
        found.append("model.arch=bert: task=distill trains a causal-LM student")
    if folder is None:
        return [*found, "distill.teacher_path: required with task=distill (a run directory or a causal-LM folder)"]
    where = f"distill.teacher_path={d.teacher_path}"
    if not (folder / "config.json").is_file():
        return [*found, f"{where}: holds no model (a run directory with model/, or a folder with config.json)"]
    problem = model_folder.causal_lm_problem(folder)
    if problem:
        return [*found, f"{where}: {problem}"]
    if not model_folder.has_tokenizer(folder):
        found.append(f"{where}: has no tokenizer; the student reads its data through the teacher's tokenizer")
    elif (other := _students_tokenizer(cfg)) is not None and _vocabulary(other) != _vocabulary(folder):
        found.append(f"{where}: its tokenizer is not the student's ({other}); a student learns the teacher's "
                     "distribution over the teacher's tokens, so both must read the same tokens")
    teacher_vocab = model_folder.read_config(folder).get("vocab_size")
    student = Path(cfg.model.pretrained_path).expanduser() if cfg.model.pretrained_path else None
    if student is not None and (student / "config.json").is_file():
        student_vocab = model_folder.read_config(student).get("vocab_size")
        if student_vocab != teacher_vocab:
            found.append(f"model.pretrained_path={cfg.model.pretrained_path}: its vocabulary ({student_vocab}) is "
                         f"not the teacher's ({teacher_vocab})")
    if student is not None and d.init is DistillInit.teacher_layers:
        found.append("distill.init=teacher_layers: builds the student from the teacher; drop "
                     "model.pretrained_path (or use distill.init=none)")
    if d.init is DistillInit.teacher_layers and d.layer_stride >= 1:
        if model_folder.read_config(folder).get("model_type") in model_folder.ENCODER_ONLY:
            found.append(f"{where}: an encoder has no causal-LM layers to keep")
        elif d.layer_stride > teacher_layers(folder):
            found.append(f"distill.layer_stride={d.layer_stride}: the teacher has {teacher_layers(folder)} layers")
    return found


def with_the_teacher(cfg: Config) -> Config:
    """A valid distillation config with the teacher's tokenizer (unless the data names the same one), and the
    student's vocabulary (and, with init=teacher_layers, its whole shape) from the teacher's config."""
    folder = teacher_folder(cfg)
    if cfg.task.name is not TaskName.distill or folder is None:
        return cfg
    data = dataclasses.replace(cfg.data, tokenizer_path=cfg.data.tokenizer_path or str(folder))
    model = cfg.model
    if cfg.distill.init is DistillInit.teacher_layers:
        shape = model_folder.model_config(folder, model)
        model = dataclasses.replace(shape, name=f"{folder.parent.name if folder.name == 'model' else folder.name}"
                                    f"-every{cfg.distill.layer_stride}",
                                    num_layers=math.ceil(shape.num_layers / cfg.distill.layer_stride))
    elif model.pretrained_path is None:
        model = dataclasses.replace(model, vocab_size=model_folder.read_config(folder).get("vocab_size"))
    return dataclasses.replace(cfg, data=data, model=model)


def _students_tokenizer(cfg: Config) -> Path | None:
    """The tokenizer the data would otherwise be read with: data.tokenizer_path, else a pretrained student's."""
    if cfg.data.tokenizer_path is not None:
        return Path(cfg.data.tokenizer_path).expanduser()
    student = cfg.model.pretrained_path
    if student is not None and model_folder.has_tokenizer(Path(student).expanduser()):
        return Path(student).expanduser()
    return None


def _vocabulary(folder: Path) -> dict | None:
    """A fast tokenizer's token -> id map with its added tokens; None when the folder has no tokenizer.json
    (then only the file's presence was checked)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    vocab = stored.get("model", {}).get("vocab")
    vocab = dict(vocab) if isinstance(vocab, dict) else {entry[0]: i for i, entry in enumerate(vocab or [])}
    return {**vocab, **{token["content"]: token["id"] for token in stored.get("added_tokens", [])}}
