"""The task seam: what a training run learns, behind one protocol the loop calls without asking which task
it runs. Causal language modelling (tasks/clm.py) is the first; supervised fine-tuning, classification,
distillation and preference tuning each come as one more module under tasks/.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol


class Task(Protocol):
    name: str

    def build_model(self, cfg, meta: dict):
        """The model to train, from the config (random weights, seeded) or a local pretrained folder; `meta` is
        the prepared data's (vocabulary size, special tokens)."""

    def loss(self, engine, batch) -> tuple[Any, Any]:
        """(loss on this micro-batch, the number of tokens or examples it is averaged over); the loss stays on the
        device (the loop syncs it only on logging steps)."""

    def evaluate(self, engine, batches: Iterable) -> dict[str, float]:
        """Named validation metrics over this rank's batches, reduced across ranks (every rank calls it, and every
        rank gets the same numbers). The first is the one a sweep or `compare` sorts by unless told otherwise."""

    def export(self, module, state: dict, folder: Path) -> None:
        """Rank 0: write the trained model (`state`, the full state dict) to `folder` in Hugging Face format."""
