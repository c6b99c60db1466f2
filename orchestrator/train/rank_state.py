"""Per-rank state that DeepSpeed's checkpoint does not hold: RNG streams and data position.

Saved next to the DeepSpeed shards as rank_<r>.pt and read back with
`torch.load(weights_only=True)`: only tensors, numbers, strings, tuples and dicts.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch


def capture(data_position: dict) -> dict:
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python_rng": random.getstate(),
        "numpy_rng": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached),
        "torch_rng": torch.get_rng_state(),
        "data": dict(data_position),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def save(path: Path, data_position: dict) -> None:
    torch.save(capture(data_position), path)


def restore(path: Path) -> dict:
    """Put the RNG streams back; return the data position to hand to the loader."""
    state = torch.load(path, weights_only=True)
    random.setstate(state["python_rng"])
    kind, key, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    return state["data"]
