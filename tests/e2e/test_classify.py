"""Sequence classification end to end: a BERT-shaped encoder saved as a user's folder (no classification head,
its own WordPiece tokenizer) fine-tuned on labelled JSONL with validation and test files on two workers; its
figures in summary.json and metrics.jsonl; the model used through transformers' pipeline and `orchestrator
predict`; built-in encoder shapes at ZeRO-3 with a stratified hold-out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import labelled_rows, metrics, orchestrator, summary, write_jsonl

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, Path]:
    """Train, dev (45 rows: the two ranks' last batches are padded) and test files."""
    root = tmp_path_factory.mktemp("labelled")
    return {name: write_jsonl(root / f"{name}.jsonl", labelled_rows(count, seed))
            for name, count, seed in (("train", 480, 0), ("dev", 45, 1), ("test", 60, 2))}


@pytest.fixture(scope="module")
def encoder(labelled, tmp_path_factory) -> Path:
    """A bare BertModel with random weights and a WordPiece tokenizer, saved as a user's folder would be."""
    import torch
    from transformers import BertConfig, BertModel

    from orchestrator.data.tokenizer import train_wordpiece

    folder = tmp_path_factory.mktemp("bert")
    tokenizer = train_wordpiece([row["text"] for row in labelled_rows(480, 0)], 300)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def classified(encoder, labelled, tmp_path_factory) -> tuple[Path, str]:
    """The folder fine-tuned at ZeRO-2 on two workers for 2 epochs: (run directory, its output)."""
    run_dir = tmp_path_factory.mktemp("classify") / "run"
    result = orchestrator("train", "task=classify", f"model.pretrained_path={encoder}", "data=local",
                          f"data.path={labelled['train']}", f"data.val_path={labelled['dev']}",
                          f"data.test_path={labelled['test']}", "train.seq_len=32", "train.micro_batch_size=8",
                          "train.epochs=1", "train.eval_every=10", "optim.lr=3e-3", "optim.warmup_steps=3",
                          "logger.mode=disabled", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout


def test_a_pretrained_encoder_learns_the_labels_and_reports_every_figure(classified):
    run_dir, output = classified
    assert "classification head: new weights classifier.bias, classifier.weight" in output
    assert "480 train / 45 val / 60 test rows, 3 labels (negative, neutral, positive)" in output
    done = summary(run_dir)
    assert done["test_accuracy"] >= 0.9 and done["test_macro_f1"] >= 0.9 and done["final_val_accuracy"] >= 0.9
    for split, rows in (("val", 45), ("test", 60)):
        matrix = done[f"{split}_confusion_matrix"]
        assert matrix["labels"] == LABELS
        assert sum(map(sum, matrix["rows_true_columns_predicted"])) == rows  # every row counted once
        per_class = done[f"{split}_per_class"]
        assert sorted(per_class) == LABELS and sum(c["support"] for c in per_class.values()) == rows
    evaluated = [row for row in metrics(run_dir) if "val_loss" in row]
    assert len(evaluated) == 3 and all({"val_accuracy", "val_macro_f1"} <= set(row) for row in evaluated)


def test_the_pipeline_returns_the_label_names_and_predict_agrees_on_every_row(classified, labelled, tmp_path):
    from transformers import pipeline

    run_dir, _ = classified
    rows = [json.loads(line) for line in labelled["test"].read_text().splitlines()]
    expected = [best["label"] for best in pipeline("text-classification", model=str(run_dir / "model"))(
        [row["text"] for row in rows])]
    assert set(expected) <= set(LABELS)
    result = orchestrator("predict", str(run_dir), "--file", str(labelled["test"]), "--out", str(tmp_path / "p.jsonl"))
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [row["predicted_label"] for row in predicted] == expected
    assert [row["text"] for row in predicted] == [row["text"] for row in rows]
    one = orchestrator("predict", str(run_dir), "--text", rows[0]["text"])
    label, probability = one.stdout.split()
    assert one.returncode == 0 and label == expected[0] and 1 / 3 < float(probability) <= 1


def test_built_in_encoder_shapes_train_lora_at_zero3_with_a_stratified_hold_out(labelled, tmp_path):
    """An encoder built from shapes (a WordPiece trained on the rows), adapters at ZeRO-3, class weights, 10% of
    the rows held out per label: the head trains in full, RUN/adapter loads with peft, RUN/model without it."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    run_dir = tmp_path / "run"
    result = orchestrator("train", "task=classify", "model.arch=bert", "model.num_layers=1", "model.hidden_size=32",
                          "model.num_heads=2", "data=local", f"data.path={labelled['train']}", "data.vocab_size=300",
                          "data.val_fraction=0.1", "train.seq_len=32", "train.micro_batch_size=8",
                          "train.max_steps=6", "train.eval_every=0", "zero=3", "train.class_weights=auto",
                          "peft=lora", "peft.r=4", "logger.mode=disabled", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    done = summary(run_dir)
    matrix = done["val_confusion_matrix"]["rows_true_columns_predicted"]
    assert sum(map(sum, matrix)) == 48 and min(map(sum, matrix)) >= 14  # 10% of 480, each label held out
    assert "test_accuracy" not in done and 0 < done["trainable_share"] < 0.5
    model = AutoModelForSequenceClassification.from_pretrained(str(run_dir / "model"))
    assert model.config.id2label == dict(enumerate(LABELS))
    base = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(run_dir / "model")))
    adapted = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    assert adapted.peft_config["default"].modules_to_save == ["classifier"]
