"""`orchestrator predict RUN_DIR --text TEXT | --file IN --out OUT`: label text with a task=classify run's model,
through transformers' text-classification pipeline (the labels are the model's id2label, saved by the run), on a
GPU when there is one, else the CPU. A file's rows are read as the run read its data (JSONL, JSON or Parquet,
its data.text_field and data.text_pair_field) and written to OUT with `predicted_label` and `score` added, whole
or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.chat_command import trained_model_folder
from orchestrator.errors import ConfigError


def run(run_dir: str, text: str | None, text_pair: str | None, file: str | None, out: str | None) -> int:
    path = Path(run_dir).expanduser()
    folder = trained_model_folder(path)
    if (text is None) == (file is None):
        raise ConfigError(["predict: give --text TEXT, or --file IN --out OUT"])
    if file is not None and out is None:
        raise ConfigError([f"--file {file}: also give --out, the JSONL file the predictions go to"])
    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise ConfigError([f"{run_dir}: its model is a {', '.join(architectures) or 'model'}, not a classifier; "
                           "predict labels text with a task=classify run"])
    text_field, pair_field = _fields(path)
    rows = _read(file, text_field, pair_field) if file is not None else None
    classify = _pipeline(folder)
    if rows is None:
        best = classify({"text": text, "text_pair": text_pair} if text_pair else text)
        best = best[0] if isinstance(best, list) else best
        print(f"{best['label']}\t{best['score']:.4f}", flush=True)
        return 0
    inputs = [{"text": row[text_field], "text_pair": row[pair_field]} if pair_field else row[text_field]
              for row in rows]
    target = Path(out).expanduser()
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w") as f:
        for row, best in zip(rows, classify(inputs, batch_size=32), strict=True):
            best = best[0] if isinstance(best, list) else best
            f.write(json.dumps({**row, "predicted_label": best["label"], "score": best["score"]}) + "\n")
    tmp.rename(target)
    print(f"labelled {len(rows):,} rows of {file} -> {target}", flush=True)
    return 0


def _fields(path: Path) -> tuple[str, str | None]:
    """The text fields the run trained on (its config.yaml), else `text` alone."""
    config = path / "config.yaml"
    if not config.is_file():
        return "text", None
    from omegaconf import OmegaConf

    data = OmegaConf.load(config).data
    return data.text_field, data.get("text_pair_field")


def _read(file: str, text_field: str, pair_field: str | None) -> list[dict]:
    from orchestrator.data.sft import read_rows

    if not Path(file).expanduser().is_file():
        raise ConfigError([f"--file {file}: no such file"])
    rows = []
    for where, row in read_rows(str(Path(file).expanduser())):
        for field in (text_field, pair_field):
            if field and not (isinstance(row, dict) and isinstance(row.get(field), str)):
                raise ConfigError([f"{where}: no text in `{field}` (the field the run's model was trained on)"])
        rows.append(row)
    return rows


def _pipeline(folder: Path):
    import torch
    from transformers import pipeline

    return pipeline("text-classification", model=str(folder), device=0 if torch.cuda.is_available() else -1,
                    truncation=True)
