"""Causal language modelling: next-token cross-entropy on packed blocks of tokens (data/pipeline.py), scored
by validation loss and perplexity. The model is built from its config (models/registry.py) and exported with
`save_pretrained`, so `AutoModelForCausalLM.from_pretrained(<run_dir>/model)` loads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from orchestrator.config.schema import Config


class CausalLM:
    name = "clm"

    def prepare_data(self, cfg: Config):
        from orchestrator.data.pipeline import prepare

        return prepare(cfg.data, cfg.train.seq_len, cfg.train.seed)

    def build_model(self, cfg: Config, meta: dict):
        from orchestrator.models import quantized_base
        from orchestrator.models.registry import build_model

        return build_model(cfg.model, meta["vocab_size"], cfg.train.seq_len, meta["eos_token_id"],
                           quantized_base.load_options(cfg))

    def model_inputs(self, batch) -> dict:
        return {"input_ids": batch, "labels": batch}

    def loss_normalizer(self, batches: list, grad_accum: int, world: int):
        return None  # every block holds seq_len tokens: each micro-batch's mean is the step's mean

    def loss(self, engine, batch, normalizer):
        return engine(**self.model_inputs(batch)).loss, batch.numel()

    def metrics(self) -> dict[str, float]:
        return {}  # every token is in the loss, every block full: tokens/s says it all

    def evaluate(self, engine, batches: Iterable) -> dict[str, float]:
        import torch
        import torch.distributed as dist

        total = torch.zeros(2, dtype=torch.float64, device=engine.device)  # loss sum, batches
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(engine.device)
                total += torch.tensor([engine(**self.model_inputs(batch)).loss.item(), 1.0],
                                      dtype=torch.float64, device=engine.device)
        dist.all_reduce(total)
        val_loss = (total[0] / total[1]).item()
        return {"val_loss": val_loss, "val_ppl": perplexity(val_loss)}

    def validation_batches(self, blocks, batch_size: int, rank: int, world: int, limit: int):
        from orchestrator.data.loader import eval_batches

        return eval_batches(blocks, batch_size, rank, world, limit)

    def final_report(self, engine, data, batch_size: int, rank: int, world: int) -> dict:
        return {}

    def export(self, module, state: dict, folder: Path) -> None:
        module.save_pretrained(str(folder), state_dict=state)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")
