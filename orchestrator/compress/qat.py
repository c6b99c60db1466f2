"""Quantization-aware training: torchao fake-quantizes the linear layers while training and the
model is converted to real quantized weights at the end.

`before_engine` must run before deepspeed.initialize: it swaps modules (FakeQuantizedLinear,
and nn.Linear for GPT-2's Conv1D), and DeepSpeed must see the final module tree to partition
it under ZeRO-3. FakeQuantizedLinear keeps nn.Linear's parameters and state-dict keys, and its
fake quantizers keep no state (scales are recomputed in every forward), so checkpoints and
exact resume need nothing extra. At export the full weights are loaded into a fresh copy of the
model and quantized with the same config; its validation loss is measured on the same batches
as the last fake-quantized evaluation, to show the two agree.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from orchestrator.compress import artifact, measure, quantization, surgery
from orchestrator.config.schema import PassConfig


class QuantizationAwareTraining:
    def __init__(self, spec: PassConfig):
        self.spec = spec
        self.config = None

    def before_engine(self, model: nn.Module) -> None:
        self.config = model.config
        surgery.conv1d_to_linear(model)
        quantization.prepare_qat(model, surgery.prunable(model), self.spec)

    def export(self, state: dict, folder: Path, val_batches: list, fake_quant_val_loss: float) -> dict:
        """Rank 0: convert, save the quantized model into `folder`, and report how it compares."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(self.config)
        model.loss_type = "ForCausalLM"
        surgery.conv1d_to_linear(model)
        model.load_state_dict(state)
        linears = surgery.prunable(model)
        fp32_bytes = measure.weight_bytes(linears)
        quantization.quantize(model, linears, self.spec)
        model.eval()
        # DeepSpeed's ZeRO-3 replaces F.linear process-wide with a version that transposes the weight,
        # which torchao's quantized tensors do not implement: evaluate with torch's own linear.
        zero3_linear, nn.functional.linear = nn.functional.linear, torch._C._nn.linear
        try:
            with torch.no_grad():
                losses = [model(input_ids=b, labels=b).loss.item() for b in val_batches]
        finally:
            nn.functional.linear = zero3_linear
        converted = sum(losses) / len(losses)
        artifact.save(model, folder, self.spec)
        ppl_fake, ppl_converted = measure.perplexity(fake_quant_val_loss), measure.perplexity(converted)
        return {"qat_bits": self.spec.bits, "fake_quant_val_loss": fake_quant_val_loss,
                "converted_val_loss": converted, "ppl_fake_quant": ppl_fake, "ppl_converted": ppl_converted,
                "ppl_change": ppl_converted / ppl_fake - 1,
                "linear_weight_bytes_before": fp32_bytes, "linear_weight_bytes_after": measure.weight_bytes(linears)}
