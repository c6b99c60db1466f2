"""Sequence classification: a pretrained encoder (BERT family) or decoder with a classification head
(transformers' AutoModelForSequenceClassification) fine-tuned on labelled text (data/classify.py), scored by
validation loss, accuracy and macro-F1 at every evaluation, with per-class figures and confusion matrices for
the validation set and, at the end, the test set in summary.json (scikit-learn's metrics, over every row of the
set gathered from every rank, each counted once). The labels are saved as the model's id2label, so
`pipeline("text-classification", model=RUN/model)` returns their names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from orchestrator.config.schema import Arch, ClassWeights, Config
from orchestrator.data.classify import ATTENDED, INPUT_IDS, LABEL, NO_LABEL, TOKEN_TYPES


class SequenceClassification:
    name = "classify"

    def __init__(self) -> None:
        self.token_types = False  # whether the model takes token_type_ids (BERT-style encoders do)
        self.class_weights = None
        self.labels: list[str] = []
        self.last_report: dict = {}

    def prepare_data(self, cfg: Config):
        from orchestrator.data.classify import prepare

        return prepare(cfg)

    def build_model(self, cfg: Config, meta: dict):
        import torch
        from transformers import AutoModelForSequenceClassification

        from orchestrator.models import quantized_base

        self.labels = meta["labels"]
        labels = {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                  "label2id": {label: i for i, label in enumerate(self.labels)}}
        attention = cfg.model.attn_implementation.value
        if cfg.model.pretrained_path:
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                cfg.model.pretrained_path, attn_implementation=attention, output_loading_info=True, **labels,
                **quantized_base.load_options(cfg))
            new = sorted(loading["missing_keys"])
            if new and _rank() == 0:
                print(f"classification head: new weights {', '.join(new)} (initialised at random)", flush=True)
        else:
            config = _config(cfg, meta, labels)
            model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
        if model.config.pad_token_id is None:  # a decoder finds each row's last token by the padding id
            model.config.pad_token_id = meta["pad_token_id"]
        self.token_types = getattr(model.config, "type_vocab_size", 0) > 1
        if cfg.train.class_weights is ClassWeights.auto:
            counts = np.maximum(np.asarray(meta["label_counts"], dtype=np.float64), 1.0)
            self.class_weights = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)
        return model

    def model_inputs(self, batch) -> dict:
        """The batch cut after its longest row's last real token; token types only for a model that has them."""
        batch = batch[..., :_longest(batch)]
        inputs = {"input_ids": batch[:, INPUT_IDS], "attention_mask": batch[:, ATTENDED]}
        if self.token_types:
            inputs["token_type_ids"] = batch[:, TOKEN_TYPES]
        return inputs

    def validation_batches(self, blocks, batch_size: int, rank: int, world: int, limit: int):
        """Every row of the set, each on one rank; the ranks' last batches padded with rows labelled NO_LABEL so
        that every rank runs as many forward passes (a collective under ZeRO-3). `limit` does not apply: the
        figures are over the whole set."""
        per_rank = -(-len(blocks) // world)
        batches = -(-per_rank // batch_size)
        mine = np.arange(rank, len(blocks), world)
        for i in range(batches):
            rows = blocks[mine[i * batch_size:(i + 1) * batch_size]] if i * batch_size < len(mine) else None
            yield _padded(rows, blocks, batch_size if i < batches - 1 else per_rank - i * batch_size)

    def loss_normalizer(self, batches: list, grad_accum: int, world: int):
        return None  # every training micro-batch holds micro_batch_size rows: its mean is the step's mean

    def loss(self, engine, batch, normalizer):
        import torch.nn.functional as F

        logits = engine(**self.model_inputs(batch)).logits.float()
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, batch[:, LABEL, 0], weight=weight), 1

    def metrics(self) -> dict[str, float]:
        return {}

    def evaluate(self, engine, batches: Iterable) -> dict[str, float]:
        """Validation loss, accuracy and macro-F1 over the whole validation set; the per-class figures and the
        confusion matrix are kept for summary.json."""
        report = self._score(engine, batches, "val")
        self.last_report = {key: value for key, value in report.items() if not isinstance(value, float)}
        return {key: value for key, value in report.items() if isinstance(value, float)}

    def final_report(self, engine, data, batch_size: int, rank: int, world: int) -> dict:
        """The last validation's per-class figures and confusion matrix; the test set's figures with the final
        model when there is one. Every rank calls it."""
        report = dict(self.last_report)
        if data.meta["rows"].get("test"):
            engine.eval()
            report.update(self._score(engine, self.validation_batches(data.blocks("test"), batch_size, rank, world,
                                                                        0), "test"))
            engine.train()
        return report

    def _score(self, engine, batches: Iterable, prefix: str) -> dict:
        import torch
        import torch.distributed as dist
        import torch.nn.functional as F
        from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

        predicted, expected, loss = [], [], 0.0
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(engine.device)
                labels = batch[:, LABEL, 0]
                logits = engine(**self.model_inputs(batch)).logits.float()
                real = labels != NO_LABEL
                loss += F.cross_entropy(logits[real], labels[real], reduction="sum").item() if real.any() else 0.0
                predicted += logits[real].argmax(dim=-1).tolist()
                expected += labels[real].tolist()
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (predicted, expected, loss))
        predicted = [p for part in gathered for p in part[0]]
        expected = [e for part in gathered for e in part[1]]
        ids = list(range(len(self.labels)))
        precision, recall, f1, support = precision_recall_fscore_support(expected, predicted, labels=ids,
                                                                         zero_division=0)
        return {
            f"{prefix}_loss": sum(part[2] for part in gathered) / max(1, len(expected)),
            f"{prefix}_accuracy": float(accuracy_score(expected, predicted)),
            f"{prefix}_macro_f1": float(f1_score(expected, predicted, labels=ids, average="macro", zero_division=0)),
            f"{prefix}_per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]),
                                            "f1": float(f1[i]), "support": int(support[i])}
                                    for i, label in enumerate(self.labels)},
            f"{prefix}_confusion_matrix": {"labels": self.labels,
                                           "rows_true_columns_predicted": confusion_matrix(
                                               expected, predicted, labels=ids).tolist()},
        }

    def export(self, module, state: dict, folder: Path) -> None:
        module.save_pretrained(str(folder), state_dict=state)


def _config(cfg: Config, meta: dict, labels: dict):
    """The transformers config of built-in shapes with a classification head: BERT (an encoder), or the
    causal-LM families' configs (their ForSequenceClassification reads the last real token)."""
    from transformers import BertConfig

    from orchestrator.models.registry import hf_config

    m = cfg.model
    if m.arch is Arch.bert:
        return BertConfig(vocab_size=m.vocab_size or meta["vocab_size"], hidden_size=m.hidden_size,
                          num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                          intermediate_size=m.intermediate_size or 4 * m.hidden_size,
                          max_position_embeddings=m.max_position_embeddings or cfg.train.seq_len,
                          hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout,
                          pad_token_id=meta["pad_token_id"], **labels)
    config = hf_config(m, meta["vocab_size"], cfg.train.seq_len, meta["eos_token_id"])
    config.update(labels)
    config.pad_token_id = meta["pad_token_id"]
    return config


def _padded(rows, blocks, count: int):
    """`rows` (or none) followed by copies of the set's first row labelled NO_LABEL, `count` rows in all."""
    import torch

    filler = blocks[[0]]
    filler[:, LABEL, 0] = NO_LABEL
    have = 0 if rows is None else len(rows)
    parts = ([rows] if rows is not None else []) + [filler.expand(count - have, -1, -1)] * (count > have)
    return torch.cat(parts)


def _longest(batch) -> int:
    return int(batch[:, ATTENDED].any(dim=0).nonzero().max()) + 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0
