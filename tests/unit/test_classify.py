"""Sequence classification's data and evaluation: bad labelled files refused in one line (exit 2, nothing
written), labels in a stable order, every validation row scored exactly once however the ranks split them, and
inverse-frequency class weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import cli
from tests.helpers import labelled_rows, write_jsonl


def _train(tmp_path: Path, capsys, *overrides: str) -> tuple[int, str]:
    code = cli.main(["train", "task=classify", "model.arch=bert", "data=local", "data.vocab_size=300",
                     f"data.cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}", *overrides])
    return code, capsys.readouterr().err


@pytest.fixture
def good(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", labelled_rows(100, 0))


def _refused(tmp_path, capsys, message: str, *overrides: str) -> None:
    code, err = _train(tmp_path, capsys, *overrides)
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and message in line, err
    assert not (tmp_path / "run").exists()
    assert not [p for p in (tmp_path / "cache").glob("classify-*") if not p.name.endswith(".lock")]


def test_a_row_missing_its_label_is_refused_naming_the_first_such_line(tmp_path, capsys):
    rows = labelled_rows(6, 0)
    del rows[3]["label"], rows[5]["label"]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    _refused(tmp_path, capsys, f"{data} line 4: no `label` field (data.label_field)", f"data.path={data}")


def test_a_label_field_no_row_has_is_refused_naming_the_fields_there(tmp_path, capsys, good):
    _refused(tmp_path, capsys, f"data.label_field=sentiment: no row of {good} has it; its fields are label, text",
             f"data.path={good}", "data.label_field=sentiment")


def test_a_single_label_is_refused(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}", "label": "spam"} for i in range(10)])
    _refused(tmp_path, capsys, "every training row has the label 'spam'; classification needs at least two",
             f"data.path={data}")


@pytest.mark.parametrize("split", ["val_path", "test_path"])
def test_a_label_never_seen_in_training_is_refused(tmp_path, capsys, good, split):
    other = write_jsonl(tmp_path / "other.jsonl", [*labelled_rows(3, 1), {"text": "so so", "label": "mixed"}])
    _refused(tmp_path, capsys, f"{other} line 4: label 'mixed' never appears in the training rows (labels: "
             "negative, neutral, positive)", f"data.path={good}", f"data.{split}={other}")


def test_a_folder_whose_family_has_no_classification_head_is_refused(tmp_path, capsys, good):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    (folder / "model.safetensors").write_bytes(b"")
    _refused(tmp_path, capsys, "is a ViTModel: transformers has no sequence-classification head for model_type "
             "'vit'", f"data.path={good}", f"model.pretrained_path={folder}")


def test_an_encoder_cannot_train_as_a_language_model(tmp_path, capsys):
    code = cli.main(["train", "model.arch=bert", f"run_dir={tmp_path / 'run'}"])
    assert code == 2 and "model.arch=bert: is an encoder: it classifies (task=classify)" in capsys.readouterr().err


def test_labels_are_ordered_numbers_numerically_and_strings_alphabetically():
    from orchestrator.data.classify import label_names

    assert label_names([("", "", None, label) for label in (10, 2, 2, 1)]) == [1, 2, 10]
    assert label_names([("", "", None, label) for label in ("b", "a", "c")]) == ["a", "b", "c"]


@pytest.mark.parametrize(("rows", "world", "micro"), [(45, 2, 8), (7, 2, 4), (16, 2, 8), (5, 1, 2)])
def test_every_validation_row_is_scored_once_and_every_rank_runs_as_many_batches(rows, world, micro):
    import numpy as np

    from orchestrator.data.classify import LABEL, NO_LABEL
    from orchestrator.data.shards import TokenBlocks
    from orchestrator.tasks.classify import SequenceClassification

    data = np.zeros((rows, 4, 8), dtype=np.int32)
    data[:, 0, 0] = np.arange(rows)  # each row's id in its first token
    data[:, LABEL, 0] = 1
    blocks = TokenBlocks(data, np.arange(rows))
    per_rank = [list(SequenceClassification().validation_batches(blocks, micro, rank, world, 1)) for rank in
                range(world)]
    assert len({len(batches) for batches in per_rank}) == 1
    scored = [int(batch[i, 0, 0]) for batches in per_rank for batch in batches for i in range(len(batch))
              if batch[i, LABEL, 0] != NO_LABEL]
    assert sorted(scored) == list(range(rows))


def test_auto_class_weights_are_inverse_frequencies(good):
    from orchestrator.config.compose import compose
    from orchestrator.tasks.classify import SequenceClassification

    task = SequenceClassification()
    cfg = compose(["task=classify", "model.arch=bert", "model.num_layers=1", "model.hidden_size=16",
                   "model.num_heads=2", "data=local", f"data.path={good}", "train.class_weights=auto"])
    task.build_model(cfg, {"labels": ["a", "b"], "label_counts": [30, 10], "vocab_size": 50, "pad_token_id": 0,
                           "eos_token_id": 0})
    assert task.class_weights.tolist() == pytest.approx([40 / 60, 40 / 20])
