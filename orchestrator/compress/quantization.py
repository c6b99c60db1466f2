"""Weight quantization through torchao's `quantize_`: which config each pass uses, and the
bytes a quantized weight really holds.

On CPU: int8 weight-only and int8 dynamic use torchao's Int8Tensor; int4 uses the prototype
Int4OpaqueTensor (two weights per byte, CPU kernels, bf16 activations), because torchao's
default int4 packings need CUDA kernels. The same configs rebuild the module layout when a
saved model is loaded (artifact.py).
"""

from __future__ import annotations

import torch
from torch import nn

from orchestrator.config.schema import PassConfig, PassName


def dtype_for(name: PassName) -> torch.dtype:
    """The model's dtype the quantized kernels expect: int4's CPU kernel takes bf16 activations."""
    return torch.bfloat16 if name is PassName.int4_weight else torch.float32


def torchao_config(spec: PassConfig):
    if spec.name is PassName.int8_weight:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
    if spec.name is PassName.int8_dynamic:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()
    if spec.name is PassName.int4_weight:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=spec.group_size)
    if spec.name is PassName.qat:
        return qat_base_config(spec)
    raise ValueError(f"{spec.name.value} is not a quantization pass")


def qat_base_config(spec: PassConfig):
    """The quantization QAT simulates while training and applies at the end. Both run on CPU, and the
    converted model computes exactly what the fake-quantized one did (same scales, same rounding)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if spec.bits == 8:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(spec.group_size))


def prepare_qat(model: nn.Module, linears: dict[str, nn.Module], spec: PassConfig) -> None:
    """Swap the layers for torchao's FakeQuantizedLinear (same parameters, same state-dict keys)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    chosen = {id(module) for module in linears.values()}
    quantize_(model, QATConfig(qat_base_config(spec), step="prepare"), filter_fn=lambda m, fqn: id(m) in chosen)


def int4_cpu_kernel() -> bool:
    """Whether torch has the CPU int4 matmul Int4OpaqueTensor dispatches to."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def quantize(model: nn.Module, linears: dict[str, nn.Linear], spec: PassConfig) -> None:
    """Quantize exactly the named linear layers (and cast the model to the dtype their kernels expect)."""
    import logging

    from torchao.quantization import quantize_

    model.to(dtype_for(spec.name))
    chosen = {id(module) for module in linears.values()}
    logging.getLogger("torchao").setLevel(logging.ERROR)
    quantize_(model, torchao_config(spec), filter_fn=lambda module, fqn: id(module) in chosen)


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds, counting every inner tensor of a torchao subclass (data, scales, zeros)."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def is_quantized(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "__tensor_flatten__")


def dense(weight: torch.Tensor) -> torch.Tensor:
    """A plain float tensor of a (possibly quantized) linear weight [out, in], for counting its zeros.

    Int4OpaqueTensor implements no dequantize; multiplying the identity by it gives the same values.
    """
    if not is_quantized(weight):
        return weight
    try:
        return weight.dequantize()
    except NotImplementedError:
        eye = torch.eye(weight.shape[1], dtype=weight.dtype)
        with torch.no_grad():
            return torch.nn.functional.linear(eye, weight).t()
