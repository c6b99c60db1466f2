"""Gradual magnitude pruning while training, under every ZeRO stage (and `keep_sparsity`, which keeps the zeros
a pruned model already has).

Each prunable layer gets a persistent `weight_mask` buffer and computes with `weight * mask`.
Under ZeRO-3 the weight is partitioned (`param.data` is empty between forwards), so zeroing
it in place is impossible; in the forward, DeepSpeed has gathered it, the product masks the
output and autograd masks the gradient. Buffers are not partitioned: every rank holds the
whole mask, DeepSpeed writes it into every checkpoint and restores it on resume. New masks
are computed from the gathered weights, identically on every rank (the same weights, the same
deterministic ranking), so no rank's mask differs. At export the masks are multiplied into the
weights and dropped: the saved model is plain, and exactly sparse.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from orchestrator.compress import pruning, surgery
from orchestrator.config.schema import PassConfig
from orchestrator.train.hooks import Gather

MASK = "weight_mask"



def _masked_forward(module: nn.Module) -> Callable:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):  # weight [in, out]: transformers' Conv1D.forward with a masked weight
        def forward(x: torch.Tensor) -> torch.Tensor:
            out = torch.addmm(module.bias, x.view(-1, x.size(-1)), module.weight * module.weight_mask)
            return out.view(*x.size()[:-1], module.nf)
    else:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, module.weight * module.weight_mask, module.bias)
    return forward


class GradualPruning:
    """Sparsity rises on a cubic schedule from spec.start_step to spec.end_step (Zhu & Gupta 2017)."""

    def __init__(self, spec: PassConfig, max_steps: int):
        self.spec = spec
        self.start = spec.start_step if spec.start_step is not None else 3 * max_steps // 5
        self.end = spec.end_step if spec.end_step is not None else max(self.start + 1, 5 * max_steps // 6)
        self.layers: dict[str, nn.Module] = {}

    def before_engine(self, model: nn.Module) -> None:
        """Give every prunable layer its first mask and the masked forward, before DeepSpeed wraps the model."""
        self.layers = surgery.prunable(model)
        for module in self.layers.values():
            module.register_buffer(MASK, self.first_mask(module.weight), persistent=True)
            module.forward = _masked_forward(module)

    def first_mask(self, weight: nn.Parameter) -> torch.Tensor:
        """All ones: the schedule prunes from a dense model."""
        return torch.ones_like(weight)

    def target(self, step: int) -> float:
        return pruning.cubic_sparsity(step, self.start, self.end, self.spec.sparsity)

    def due(self, step: int) -> bool:
        """Masks change every update_every steps from start_step, and at end_step itself."""
        return self.start <= step <= self.end and ((step - self.start) % self.spec.update_every == 0
                                                   or step == self.end)

    def on_step_end(self, step: int, gather: Gather) -> None:
        """After the optimizer step: recompute the masks when the schedule says so (all ranks together)."""
        if not self.due(step):
            return
        weights = [module.weight for module in self.layers.values()]
        with gather(weights), torch.no_grad():
            masked = {name: module.weight * module.weight_mask for name, module in self.layers.items()}
            # Ranking |w x mask| keeps pruned weights pruned: they are the zeros, smallest of all.
            masks = pruning.magnitude_masks(masked, self.target(step), self.spec.global_ranking)
            for name, module in self.layers.items():
                module.weight_mask.copy_(masks[name])

    def sparsity(self) -> float:
        zeros = sum(int((m.weight_mask == 0).sum()) for m in self.layers.values())
        return zeros / sum(m.weight_mask.numel() for m in self.layers.values())

    def describe(self) -> dict:
        """What made the masks, for the compression report."""
        return {"schedule": {"start_step": self.start, "end_step": self.end, "final_sparsity": self.spec.sparsity,
                             "update_every": self.spec.update_every}}

    def at_export(self, state: dict) -> dict:
        """The full state dict with masks multiplied in and the mask entries removed."""
        for name in self.layers:
            mask = state.pop(f"{name}.{MASK}")
            state[f"{name}.weight"] = state[f"{name}.weight"] * mask.to(state[f"{name}.weight"].dtype)
        return state


class KeptSparsity(GradualPruning):
    """`keep_sparsity`: a pruned model's zero weights stay zero while it trains (compress's distill pass, or
    fine-tuning a pruned model): the masks are its zeros when training starts, and never change."""

    def __init__(self, spec: PassConfig):
        super().__init__(spec, max_steps=1)

    def first_mask(self, weight: nn.Parameter) -> torch.Tensor:
        """The weight's zeros, gathered whole when it was loaded partitioned at ZeRO-3."""
        import contextlib

        import deepspeed

        partitioned = hasattr(weight, "ds_id")
        with deepspeed.zero.GatheredParameters([weight]) if partitioned else contextlib.nullcontext():
            return (weight != 0).to(weight.dtype)

    def due(self, step: int) -> bool:
        return False

    def describe(self) -> dict:
        return {"kept": "the zero weights the model started training with"}
