"""The task seam: what a training run learns, behind one protocol the loop calls without asking which task
it runs. Causal language modelling (tasks/clm.py), supervised fine-tuning (tasks/sft.py), sequence
classification (tasks/classify.py), distillation (tasks/distill.py) and preference tuning (tasks/dpo.py) are
here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol


class Task(Protocol):
    name: str

    def prepare_data(self, cfg):
        """The run's data, prepared once by the driver before Ray starts and opened by every rank: an object with
        `root`, `meta` (vocab_size, eos_token_id, seq_len, train_blocks, val_blocks, streaming), `tokenizer_dir`,
        `blocks("val")`, `batches(micro, rank, world, seed)` and `describe(total_tokens)` lines."""

    def build_model(self, cfg, meta: dict):
        """The model to train, from the config (random weights, seeded) or a local pretrained folder; `meta` is
        the prepared data's (vocabulary size, special tokens)."""

    def model_inputs(self, batch) -> dict:
        """The model's forward arguments for a batch of this task's data (input_ids, labels; position_ids for
        packed rows): what the loss, the evaluation and `compress` run the model on."""

    def validation_batches(self, blocks, batch_size: int, rank: int, world: int, limit: int) -> Iterable:
        """This rank's validation batches over `blocks`, the same at every evaluation, as many on every rank (under
        ZeRO-3 each forward pass is a collective); at most `limit` where the task samples the set."""

    def loss_normalizer(self, batches: list, grad_accum: int, world: int) -> Any:
        """Called by every rank once per step with the step's micro-batches, before their losses: what `loss`
        needs to make the step's loss the mean over the global batch (may be a collective), or None where each
        micro-batch's own mean already is (every micro-batch counts as many tokens)."""

    def loss(self, engine, batch, normalizer) -> tuple[Any, Any]:
        """(the loss to backward on this micro-batch, its weight in the step's reported loss); the loss stays on
        the device (the loop syncs it only on logging steps)."""

    def metrics(self) -> dict[str, float]:
        """The task's running figures since the run (or its resume) started, logged on every logging step and
        written to summary.json; no collective."""

    def evaluate(self, engine, batches: Iterable) -> dict[str, float]:
        """Named validation metrics over this rank's batches, reduced across ranks (every rank calls it, and every
        rank gets the same numbers). The first is the one a sweep or `compare` sorts by unless told otherwise."""

    def final_report(self, engine, data, batch_size: int, rank: int, world: int) -> dict:
        """Figures for summary.json only, after the last step (every rank calls it: it may evaluate a test set)."""

    def export(self, module, state: dict, folder: Path) -> None:
        """Rank 0: write the trained model (`state`, the full state dict) to `folder` in Hugging Face format."""
