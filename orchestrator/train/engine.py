"""DeepSpeed glue, and the only module that imports deepspeed.

DeepSpeed owns sharding (ZeRO), offload, mixed precision, gradient accumulation and clipping,
and checkpoint files; this module only chooses the accelerator at run time and wraps the
few engine calls the loop needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def use_cpu_accelerator_unless_cuda() -> str:
    """Pick DeepSpeed's accelerator before deepspeed is imported: cuda when present, else cpu+gloo."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", device)
    return device


def initialize(model, ds_config: dict, lr_lambda: Callable[[int], float]):
    """Wrap the model in a DeepSpeed engine with the configured optimizer and our LR schedule."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda optimizer: LambdaLR(optimizer, lr_lambda),
    )
    return engine


def save_checkpoint(engine, checkpoint_dir: Path, tag: str) -> None:
    """Every rank writes its ZeRO shard into checkpoint_dir/tag. We seal and point `latest` ourselves
    (checkpoint.py) only once every rank has finished, so DeepSpeed's own `latest` is not written."""
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, save_latest=False)


def load_checkpoint(engine, checkpoint_dir: Path, tag: str) -> None:
    """Model, optimizer (this rank's shard) and LR scheduler state, exactly as saved."""
    path, _ = engine.load_checkpoint(str(checkpoint_dir), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {checkpoint_dir / tag}")


def full_state_dict(engine) -> dict:
    """The whole model's weights. A collective under ZeRO-3 (all ranks call; rank 0 gets them)."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def gathered(engine, params: list):
    """A context in which `params` are whole on every rank: DeepSpeed's GatheredParameters under ZeRO-3
    (a collective: every rank enters it), nothing to do at stages 0-2."""
    import contextlib

    if not engine.zero_optimization_partition_weights():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def consolidated_state_dict(checkpoint_path: Path, zero_stage: int) -> dict:
    """The whole model's fp32 weights (and buffers) from one of our checkpoints, in this process, without a
    process group: DeepSpeed's zero_to_fp32 merges the ranks' ZeRO 1-3 shards; stage 0 saved it whole."""
    import torch

    if zero_stage == 0:
        return torch.load(checkpoint_path / "mp_rank_00_model_states.pt", map_location="cpu",
                          weights_only=False)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_path.parent), tag=checkpoint_path.name)
