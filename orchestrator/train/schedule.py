"""The learning-rate schedule: linear warmup, then cosine decay to a floor. Pure math."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Multiplier on the peak LR for the optimizer step with 0-based index `step`.

    Warmup counts from 1 so the first step already learns (lr/warmup, not 0).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
