"""Model and hardware FLOPs utilization (MFU, HFU): how much of the accelerators' peak the run uses.

    MFU = flops_per_token x tokens/s / (peak per device x devices)

flops_per_token is the plan's 6N + 12·L·H·Q·T (PaLM, appendix B: N parameters, L layers, H heads of
width Q, T tokens per sequence; forward and backward, no recomputation). HFU also counts the forward
pass activation checkpointing recomputes: 8N instead of 6N for every checkpointed layer, so a factor
4/3 with full checkpointing.

The peak is the dense (not 2:4-sparse) tensor-core figure from NVIDIA's datasheets for the device
name torch reports, at the run's precision; a device not in the table, and every CPU, is measured
once with a matmul probe and cached per machine, thread count and dtype (<cache>/peak_flops.json).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

# Dense TFLOP/s per device: (name fragment, bf16/fp16, fp32). Most specific fragments first.
_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),  # SXM; the datasheet's 1,979 is with 2:4 sparsity
    ("H200", 989.0, 67.0),
    ("GH200", 989.0, 67.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),
    ("V100", 125.0, 15.7),  # fp16 only: V100 has no bf16
    ("T4", 65.0, 8.1),
]


def table_peak_flops(device_name: str, precision: str) -> float | None:
    """Datasheet peak FLOP/s of one device at `precision` (bf16, fp16, fp32), or None if unknown."""
    for fragment, half, single in _PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
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


def peak_flops(device_type: str, precision: str, threads: int, cache_dir: Path) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from). Collective-free; call it on one rank."""
    import torch

    name = torch.cuda.get_device_name() if device_type == "cuda" else _cpu_name()
    if device_type == "cuda":
        peak = table_peak_flops(name, precision)
        if peak:
            return peak, f"{name} datasheet, {precision} dense"
    key = f"{device_type}|{name}|{precision}|{threads} threads|torch {torch.__version__}"
    cache = cache_dir / "peak_flops.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in known:
        known[key] = matmul_probe(device_type, precision, threads)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(cache)
    return known[key], f"{name}, {threads} thread(s), {precision}: measured by a matmul probe ({cache})"


def matmul_probe(device_type: str, precision: str, threads: int, size: int = 1024, seconds: float = 0.5) -> float:
    """Best FLOP/s of square matmuls on this device: the peak a training step's matmuls could reach."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if device_type == "cpu":
        torch.set_num_threads(threads)
        size = 512
    device = torch.device(device_type)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
