"""Model rewrites the passes need: which layers are prunable, and GPT-2's Conv1D as nn.Linear.

GPT-2's attention and MLP layers are transformers' `Conv1D` (weight stored [in, out]), which
torchao neither recognises nor quantizes; its default filter then quantizes only the tied
`lm_head`, which unties it and makes the model bigger. So quantization and pruning run on
`nn.Linear` copies (weight transposed, identical outputs), and a model that stays dense in
storage is turned back into Conv1D before `save_pretrained`, so plain `from_pretrained` loads it.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD = "lm_head"


def _swap(model: nn.Module, wanted, build) -> int:
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, build(child))
                count += 1
    return count


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace every transformers Conv1D by an nn.Linear computing the same function; returns how many."""
    from transformers.pytorch_utils import Conv1D

    def build(conv: Conv1D) -> nn.Linear:
        n_in, n_out = conv.weight.shape
        linear = nn.Linear(n_in, n_out, bias=conv.bias is not None, device=conv.weight.device,
                           dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        return linear

    return _swap(model, lambda m: isinstance(m, Conv1D), build)


def linear_to_conv1d(model: nn.Module) -> int:
    """The inverse for GPT-2 models, so the saved file has the layout GPT2LMHeadModel expects."""
    from transformers.pytorch_utils import Conv1D

    def build(linear: nn.Linear) -> Conv1D:
        conv = Conv1D(linear.out_features, linear.in_features)
        with torch.no_grad():
            conv.weight.copy_(linear.weight.t())
            if linear.bias is not None:
                conv.bias.copy_(linear.bias)
            else:
                conv.bias.zero_()
        return conv

    return _swap(model, lambda m: type(m) is nn.Linear and m is not getattr(model, HEAD, None), build)


def prunable(model: nn.Module, include_head: bool = False) -> dict[str, nn.Module]:
    """The transformer blocks' linear layers by name (nn.Linear, or GPT-2's Conv1D while training):
    what pruning and quantization act on.

    The output head is left out unless asked for: it is usually tied to the input embedding,
    and changing it changes the embedding too.
    """
    from transformers.pytorch_utils import Conv1D

    return {name: module for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and (include_head or name != HEAD)}


def head_is_tied(model: nn.Module) -> bool:
    head, embed = getattr(model, HEAD, None), model.get_input_embeddings()
    return head is not None and head.weight is embed.weight
