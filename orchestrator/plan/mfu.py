"""Model and hardware FLOPs utilization (MFU, HFU): how much of the accelerators' peak the run uses.

    MFU = flops_per_token x tokens/s / (peak per device x devices)

flops_per_token is the plan's 6N + 12·L·H·Q·T (PaLM, appendix B: N parameters, L layers, H heads of
width Q, T tokens per sequence; forward and backward, no recomputation). HFU also counts the forward
pass activation checkpointing recomputes: 8N instead of 6N for every checkpointed layer, so a factor
4/3 with full checkpointing.

The peak is the dense (not 2:4-sparse) tensor-core figure from NVIDIA's datasheets for the device
name torch reports, at the run's precision; a device not in the table, and every CPU, is measured
once by the workers (train/peak_flops.py). Pure: no torch, so `orchestrator plan` stays instant.
"""

from __future__ import annotations

import re

# Dense TFLOP/s per device: (model name as torch reports it, bf16/fp16 with FP32 accumulate, fp32). A name
# matches when its words appear in the device name in order, as whole words: "L4" is not "L40", and "H200"
# is not "H200 NVL". The most specific names come first.
_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),  # SXM; the datasheet's 1,979 is with 2:4 sparsity
    ("H200 NVL", 835.0, 60.0),
    ("H200", 989.0, 67.0),  # SXM
    ("GH200", 989.0, 67.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", 125.0, 31.2),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),  # FP32 accumulate (training's); FP16 accumulate doubles it to 330.3
    ("V100", 125.0, 15.7),  # fp16 only: V100 has no bf16
    ("T4", 65.0, 8.1),
]


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", name.lower())


def _names(model: str, device_name: str) -> bool:
    """The model's words appear in the device's name as consecutive whole words."""
    wanted, words = _words(model), _words(device_name)
    return any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


def table_peak_flops(device_name: str, precision: str) -> float | None:
    """Datasheet peak FLOP/s of one device at `precision` (bf16, fp16, fp32), or None if unknown."""
    for model, half, single in _PEAK_TFLOPS:
        if _names(model, device_name):
            return (single if precision == "fp32" else half) * 1e12
    return None


def hfu_factor(checkpointed_layers: int, num_layers: int) -> float:
    """Hardware FLOPs over model FLOPs: a checkpointed layer runs its forward twice (8 instead of 6 per parameter)."""
    return 1.0 + (checkpointed_layers / num_layers) / 3.0 if num_layers else 1.0


def checkpointed_layers(mode: str, every: int, num_layers: int) -> int:
    """Layers activation checkpointing recomputes (train.activation_checkpointing: none, full, every_n)."""
    if mode == "full":
        return num_layers
    if mode == "every_n":
        return len(range(0, num_layers, every))
    return 0


def utilization(flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float, devices: int) -> float:
    return flops_per_token * tokens_per_s / (peak_flops_per_device * devices)
