"""What pruning does to weights: torch's pruning utilities, torchao's Wanda and 2:4 sparsifiers,
and the pure mask arithmetic gradual pruning needs during training.

Pruning here zeroes weights in place; the tensors stay dense. That saves nothing on its own
(docs/compression.md): it is what sparse kernels, 2:4 kernels on GPUs or a later
quantization pass can use.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from orchestrator.config.compress_checks import kept_channels


def magnitude(linears: dict[str, nn.Linear], sparsity: float, global_ranking: bool) -> None:
    """Zero the `sparsity` share of weights with the smallest |w|, across all layers or within each."""
    from torch.nn.utils import prune

    params = [(module, "weight") for module in linears.values()]
    if global_ranking:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in params:
            prune.l1_unstructured(module, name, amount=sparsity)
    for module, name in params:
        prune.remove(module, name)  # bake the mask into the weight; no parametrization is left behind


def wanda(model: nn.Module, linears: dict[str, nn.Linear], batches: Iterable[dict], sparsity: float,
          two_of_four: bool = False) -> None:
    """Wanda (Sun et al. 2023) through torchao: zero the weights with the smallest |w| x ||input channel||,
    the norms observed on calibration batches (the model's forward arguments). `two_of_four`: 2 of every 4
    consecutive input weights."""
    import warnings

    from torchao.sparsity import WandaSparsifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that 2:4 fixes the level at 50%, which we know
        sparsifier = WandaSparsifier(sparsity_level=sparsity, semi_structured_block_size=4 if two_of_four else None)
    sparsifier.prepare(model, [{"tensor_fqn": f"{name}.weight"} for name in linears])
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    sparsifier.step()
    sparsifier.squash_mask()


def two_of_four(linears: dict[str, nn.Linear]) -> None:
    """2:4 by magnitude: in every 4 consecutive input weights of a row, the 2 smallest |w| become zero."""
    with torch.no_grad():
        for module in linears.values():
            w = module.weight
            blocks = w.view(-1, 4)
            drop = blocks.abs().argsort(dim=1)[:, :2]
            blocks.scatter_(1, drop, 0.0)


def mlp_channels(model: nn.Module, share: float) -> int:
    """Structured pruning: remove the least important MLP channels of every block, shrinking the layers.

    A channel's importance is the product of the norms of the weights that write it (up/gate rows, or
    GPT-2's c_fc row) and read it (down column, c_proj column): a channel either side barely uses
    contributes little. Every block keeps the same number, so the model config keeps one MLP width,
    which is updated; returns it. Runs on nn.Linear layers (GPT-2's Conv1D swapped first).
    """
    width = None
    for block in [m for name, m in model.named_modules() if name.endswith(".mlp")]:
        if hasattr(block, "up_proj"):  # Llama: down(act(gate(x)) * up(x))
            writers, reader = [block.gate_proj, block.up_proj], block.down_proj
        else:  # GPT-2: c_proj(act(c_fc(x)))
            writers, reader = [block.c_fc], block.c_proj
        score = reader.weight.detach().norm(dim=0)
        for layer in writers:
            score = score * layer.weight.detach().norm(dim=1)
        width = kept_channels(score.numel(), share)
        keep = score.topk(width).indices.sort().values
        for layer in writers:
            _replace(block, layer, layer.weight[keep], None if layer.bias is None else layer.bias[keep])
        _replace(block, reader, reader.weight[:, keep], reader.bias)
    if width is None:
        raise ValueError("no MLP blocks found (expected Llama's gate/up/down or GPT-2's c_fc/c_proj)")
    config = model.config
    setattr(config, "n_inner" if config.model_type == "gpt2" else "intermediate_size", width)
    return width


def _replace(parent: nn.Module, old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    name = next(n for n, child in parent.named_children() if child is old)
    setattr(parent, name, new)


# --- gradual pruning during training: pure arithmetic, tested without a model ---

def cubic_sparsity(step: int, start: int, end: int, final: float) -> float:
    """Zhu & Gupta's schedule: 0 before `start`, `final` from `end` on, s_f (1 - (1 - t)^3) in between."""
    if step < start:
        return 0.0
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final * (1.0 - (1.0 - progress) ** 3)


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, global_ranking: bool) -> dict[str, torch.Tensor]:
    """Keep-masks (1 keep, 0 prune) zeroing exactly round(sparsity x count) weights, the smallest |w|.

    Exact counts, not a threshold: ties at the threshold (many zeros already) would otherwise
    overshoot. Global ranking counts over all the tensors together, per layer within each.
    """
    if not global_ranking:
        return {name: magnitude_masks({name: w}, sparsity, True)[name] for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    keep = torch.ones_like(flat)
    count = round(sparsity * flat.numel())
    if count:
        keep[torch.topk(flat, count, largest=False, sorted=False).indices] = 0.0
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset : offset + w.numel()].view_as(w).to(w.dtype)
        offset += w.numel()
    return masks
