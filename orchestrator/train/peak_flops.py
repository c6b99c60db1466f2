"""The peak FLOP/s of one device, as a worker sees it: the datasheet figure for a known GPU
(plan/mfu.py's table), else a matmul probe, run once per machine, thread count and dtype and cached
in <cache>/peak_flops.json. Needs torch, so it lives with the workers, not the planner.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from orchestrator.plan.mfu import table_peak_flops


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

    from orchestrator.train.engine import torch_dtype

    dtype = torch_dtype(precision)
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
