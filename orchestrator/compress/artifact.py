"""Saving a compressed model, and the one call that loads it back: `orchestrator.compress.artifact.load`.

A model whose weights are still plain tensors (pruning only) is saved with `save_pretrained`
(GPT-2's layers turned back into Conv1D), so plain `AutoModelForCausalLM.from_pretrained`
loads it. A quantized model holds torchao tensor subclasses, which safetensors cannot store:
it is saved as `model.pt` (a state dict torch loads with `weights_only=True`) next to its
`config.json` and `compression.json` (the quantization pass), and `load` rebuilds the same
module layout, quantizes it the same way and assigns the saved tensors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from orchestrator.config.schema import PassConfig

RECIPE = "compression.json"
WEIGHTS = "model.pt"


def save(model: nn.Module, folder: Path, quantization: PassConfig | None) -> None:
    """Write the model to `folder` (which must not hold another model)."""
    from orchestrator.compress import surgery

    folder.mkdir(parents=True, exist_ok=True)
    if quantization is None:
        if model.config.model_type == "gpt2":
            surgery.linear_to_conv1d(model)
        model.save_pretrained(str(folder))
        return
    model.config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / WEIGHTS)
    spec = {k: v.value if hasattr(v, "value") else v for k, v in dataclasses.asdict(quantization).items()}
    (folder / RECIPE).write_text(json.dumps({"quantization": spec, "linear_layers": "nn.Linear"}, indent=2))


def load(path: str | Path) -> nn.Module:
    """Load a model `orchestrator compress` wrote, ready to run (eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from orchestrator.compress import quantization, surgery

    folder = Path(path)
    recipe = folder / RECIPE
    if not recipe.exists():
        return AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    spec = _pass_config(json.loads(recipe.read_text())["quantization"])
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    surgery.conv1d_to_linear(model)
    quantization.quantize(model, surgery.prunable(model, include_head=spec.lm_head), spec)
    state = torch.load(folder / WEIGHTS, weights_only=True)
    model.load_state_dict(state, assign=True)
    if surgery.HEAD in dict(model.named_children()) and model.config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def _pass_config(data: dict) -> PassConfig:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PassConfig), data))  # type: ignore[return-value]


