"""The frozen teacher of `task=distill`: eval mode, no gradients, no optimizer state. At ZeRO-3 it loads
partitioned (models/partitioned_load.py) and runs inside an inference-only DeepSpeed engine, so each rank holds
1/N of its weights, gathered layer by layer for its forward pass, as the student's are (the approach
accelerate and TRL take for their reference models); at stages 0-2 every rank holds it whole, in the run's
precision.
"""

from __future__ import annotations

import copy
from pathlib import Path

from orchestrator.config.schema import Precision


def load(folder: Path, precision: Precision, attention: str):
    """The teacher, ready to call: a DeepSpeed engine at ZeRO-3, else the model on this rank's device."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_deepspeed

    from orchestrator.models import partitioned_load
    from orchestrator.train.engine import torch_dtype

    live = hf_deepspeed._hf_deepspeed_config_weak_ref() if hf_deepspeed.is_deepspeed_zero3_enabled() else None
    if live is not None:
        model = partitioned_load.load(str(folder), attention, "teacher") or AutoModelForCausalLM.from_pretrained(
            str(folder), attn_implementation=attention)
        model.loss_type = "ForCausalLM"  # name it, or transformers warns on every rank
        return _inference_engine(model.requires_grad_(False), live.config)
    dtype = torch_dtype(precision)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation=attention, dtype=dtype)
    model.loss_type = "ForCausalLM"
    return model.to(device).requires_grad_(False).eval()


def _inference_engine(model, ds_config: dict):
    """DeepSpeed's ZeRO-3 engine without an optimizer: it keeps the partitions and gathers them for each forward
    pass. The training-only blocks go (an optimizer or scheduler would be built for nothing)."""
    import deepspeed

    config = copy.deepcopy(ds_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"].pop("offload_optimizer", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def parameter_bytes(teacher) -> tuple[int, int]:
    """(bytes of the teacher's weights this rank holds, bytes of all of them)."""
    held = whole = 0
    for param in teacher.parameters():
        size = param.element_size()
        held += size * (param.ds_tensor.numel() if hasattr(param, "ds_tensor") else param.numel())
        whole += size * getattr(param, "ds_numel", param.numel())
    return held, whole
