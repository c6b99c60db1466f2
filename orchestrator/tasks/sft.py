"""Supervised fine-tuning: a pretrained causal LM learns the replies of chat or prompt/completion samples
(data/sft.py renders, masks and packs them), the loss on reply tokens only.

A step's loss is the mean over every loss token of the global batch, whatever its split into micro-batches and
ranks (transformers #34191): the step's micro-batches are counted first, the counts summed over ranks, and each
micro-batch's summed token losses divided by that total (scaled back by what DeepSpeed divides by: the
accumulation steps and the world size). Micro 8 x accumulation 1 and micro 1 x accumulation 8, on one worker or
two, give the same loss and gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orchestrator.config.schema import Config
from orchestrator.data.sft import ATTENDED, IGNORE, INPUT_IDS, LABELS, POSITIONS
from orchestrator.tasks.clm import perplexity


class SupervisedFineTuning:
    name = "sft"

    def __init__(self) -> None:
        self.counted = None
        """Over the steps trained since start: [reply tokens in the loss, sample tokens, row tokens], global."""

    def prepare_data(self, cfg: Config):
        from orchestrator.data.sft import prepare

        return prepare(cfg)

    def build_model(self, cfg: Config, meta: dict):
        from orchestrator.models import quantized_base
        from orchestrator.models.registry import build_model

        model = build_model(cfg.model, meta["vocab_size"], cfg.train.seq_len, meta["eos_token_id"],
                            quantized_base.load_options(cfg))
        if meta["vocab_size"] > model.get_input_embeddings().num_embeddings:  # the template's tokens were added
            model.resize_token_embeddings(meta["vocab_size"])
        model.generation_config.eos_token_id = meta["eos_token_id"]  # the end-of-turn token: a reply stops there
        return model

    def loss_normalizer(self, batches: list, grad_accum: int, world: int):
        """Loss tokens of the global batch, over what DeepSpeed divides the gradients by (one all-reduce, which
        also counts the step's sample tokens and the tokens it computes on, for `metrics`)."""
        import torch
        import torch.distributed as dist

        counts = torch.stack([torch.stack([(batch[:, LABELS] != IGNORE).sum(), batch[:, ATTENDED].sum(),
                                           torch.tensor(len(batch) * longest(batch), device=batch.device)])
                              for batch in batches]).sum(dim=0).to(torch.float64)
        dist.all_reduce(counts)
        self.counted = counts if self.counted is None else self.counted + counts
        return (counts[0] / (grad_accum * world)).clamp(min=1.0 / (grad_accum * world))

    def metrics(self) -> dict[str, float]:
        if self.counted is None:
            return {}
        loss_tokens, sample_tokens, row_tokens = self.counted.tolist()
        return {"loss_tokens": int(loss_tokens), "packing_efficiency": sample_tokens / row_tokens}

    def model_inputs(self, batch) -> dict:
        """The batch cut after its longest row's last real token (unpacked rows pad only to the batch's longest)."""
        batch = batch[..., :longest(batch)]
        return {"input_ids": batch[:, INPUT_IDS], "labels": batch[:, LABELS], "position_ids": batch[:, POSITIONS],
                "use_cache": False}

    def loss(self, engine, batch, normalizer):
        return engine(**self.model_inputs(batch), num_items_in_batch=normalizer).loss, 1

    def evaluate(self, engine, batches: Iterable) -> dict[str, float]:
        """Validation loss over every reply token of the validation rows (all ranks'), and its perplexity."""
        import torch
        import torch.distributed as dist

        total = torch.zeros(2, dtype=torch.float64, device=engine.device)  # summed token losses, tokens
        with torch.no_grad():
            for batch in batches:
                inputs = self.model_inputs(batch.to(engine.device))
                out = engine(**inputs, num_items_in_batch=1)  # the sum of the token losses
                total += torch.stack([out.loss.detach().to(torch.float64),
                                      (inputs["labels"] != IGNORE).sum().to(torch.float64)])
        dist.all_reduce(total)
        val_loss = (total[0] / total[1].clamp(min=1)).item()
        return {"val_loss": val_loss, "val_ppl": perplexity(val_loss)}

    def validation_batches(self, blocks, batch_size: int, rank: int, world: int, limit: int):
        from orchestrator.data.loader import eval_batches

        return eval_batches(blocks, batch_size, rank, world, limit)

    def final_report(self, engine, data, batch_size: int, rank: int, world: int) -> dict:
        return {}

    def export(self, module, state: dict, folder: Path) -> None:
        module.save_pretrained(str(folder), state_dict=state)


def longest(batch) -> int:
    """Tokens up to the batch's longest row's last real one: what a step computes on."""
    return int(batch[:, ATTENDED].any(dim=0).nonzero().max()) + 1
