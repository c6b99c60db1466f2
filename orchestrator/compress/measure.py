"""The numbers a user decides by: quality (validation loss, perplexity), sparsity, size (bytes of
the prunable linear weights, bytes on disk) and CPU speed (prefill and one decode step).

Sparsity and bytes count the prunable weights (the transformer blocks' linear layers, the
ones the passes act on); embeddings and norms are the same before and after and would only
dilute the ratio.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from orchestrator.compress.quantization import dense, tensor_bytes


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def validation_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int, max_batches: int,
                    inputs: Callable[[torch.Tensor], dict]) -> float:
    """Mean loss over the first `max_batches` validation batches (the same every time); `inputs` turns a batch
    into the model's arguments (the run's task: every next token, or a fine-tuning's reply tokens)."""
    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(min(max_batches, -(-len(blocks) // batch_size))):
            batch = blocks[i * batch_size : (i + 1) * batch_size]
            losses.append(model(**inputs(batch)).loss.float().item())
    return sum(losses) / len(losses)


def sparsity(linears: dict[str, nn.Linear]) -> tuple[float, dict[str, float]]:
    """(overall, per layer) share of exactly-zero weights."""
    zeros = total = 0
    per_layer = {}
    for name, module in linears.items():
        w = dense(module.weight)
        z = int((w == 0).sum())
        per_layer[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return (zeros / total if total else 0.0), per_layer


def weight_bytes(linears: dict[str, nn.Linear]) -> int:
    """Bytes the layers' weights hold (quantized data plus scales and zero points)."""
    return sum(tensor_bytes(module.weight) for module in linears.values())


def folder_bytes(folder: Path, patterns: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt")) -> int:
    """Bytes of a saved model's weight files."""
    return sum(f.stat().st_size for pattern in patterns for f in Path(folder).glob(pattern))


def latency_ms(model: nn.Module, seq_len: int, vocab_size: int, runs: int, compiled: bool) -> dict[str, float]:
    """Median milliseconds of a prefill of one `seq_len` sequence and of one decode step after it
    (one token attending to the cached sequence), after warm-ups: one eager, two compiled (the second
    call with a new shape recompiles with dynamic shapes)."""
    target = torch.compile(model) if compiled else model
    prompt = torch.randint(0, vocab_size, (1, seq_len - 1), generator=torch.Generator().manual_seed(0))
    token = prompt[:, -1:]
    prefill, decode = [], []
    warmup = 2 if compiled else 1
    with torch.no_grad():
        for i in range(runs + warmup):
            start = time.perf_counter()
            out = target(input_ids=prompt, use_cache=True)
            middle = time.perf_counter()
            target(input_ids=token, cache=out.cache, use_cache=True)
            end = time.perf_counter()
            if i >= warmup:
                prefill.append(1000 * (middle - start))
                decode.append(1000 * (end - middle))
    return {"prefill_ms": statistics.median(prefill), "decode_ms": statistics.median(decode)}
