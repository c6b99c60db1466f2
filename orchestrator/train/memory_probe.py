"""Measure what one rank really holds: bytes of parameter, gradient and optimizer-state tensors.

Summed from the tensors themselves (unique storages found by the garbage collector), not from
RSS, so the figure is exact and comparable with the plan's prediction. Called once, right
after a backward pass and before the optimizer step, when parameters, gradients and
optimizer states all exist at once (optimizer states appear at the first step, so the probe
runs on the second).
"""

from __future__ import annotations

import gc


def _storage(tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
        return (storage.data_ptr(), storage.nbytes()) if storage.data_ptr() else None
    except RuntimeError:  # a fake tensor torch.compile traced with: it holds no memory
        return None


def _unique_bytes(tensors, seen: set[int]) -> int:
    total = 0
    for tensor in tensors:
        found = _storage(tensor) if tensor is not None else None
        if found and found[0] not in seen:
            seen.add(found[0])
            total += found[1]
    return total


def model_state_bytes(engine) -> dict[str, int]:
    """{params, optimizer, grads_and_buffers, total} bytes this process holds for the engine.

    params: the module's parameters (their ZeRO-3 partitions when partitioned).
    optimizer: the torch optimizer's states plus the fp32 master copies DeepSpeed hands it.
    grads_and_buffers: every other tensor storage alive in the process (gradients, gradient
    partitions, communication buckets). The dataset is no tensor (a memory-mapped token shard).
    """
    import torch

    seen: set[int] = set()
    module_params = list(engine.module.parameters())
    params = _unique_bytes((getattr(p, "ds_tensor", None) if hasattr(p, "ds_tensor") else p for p in module_params),
                           seen)
    optimizer = _unique_bytes(_optimizer_tensors(engine), seen)
    rest = []
    # The loop freezes everything built before the first step (gc.freeze), and frozen objects are invisible to
    # gc.get_objects: ZeRO-3's fp32 partitions and gradient buffers among them. Thaw them for this one look.
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    try:
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and not obj.is_meta:
                    rest.append(obj)
            except ReferenceError:
                continue
    finally:
        if frozen:
            gc.freeze()
    grads_and_buffers = _unique_bytes(rest, seen)
    return {
        "params": params,
        "optimizer": optimizer,
        "grads_and_buffers": grads_and_buffers,
        "total": params + optimizer + grads_and_buffers,
    }


def optimizer_bytes(engine) -> int:
    """Bytes of the optimizer's states and the fp32 master copies DeepSpeed hands it, on this rank."""
    return _unique_bytes(_optimizer_tensors(engine), set())


def _optimizer_tensors(engine) -> list:
    import torch

    inner = engine.optimizer
    while hasattr(inner, "optimizer") and inner.optimizer is not inner:  # DeepSpeed wraps torch's optimizer
        inner = inner.optimizer
    states = [v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    masters = [p for group in inner.param_groups for p in group["params"]]
    # ZeRO-3 hands its fp32 partitions to the optimizer only during its step (param_groups are empty between steps).
    return states + masters + list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))


class LoadMemory:
    """The peak memory a model's load added on this rank (`bytes` after the `with`): on CUDA what torch
    allocated at most above what it held before; on CPU the peak resident set above the one before (Linux:
    the process's high-water mark is reset first, through /proc/self/clear_refs). How `zero.Init` is judged:
    a partitioned load must not peak at the whole model."""

    def __init__(self, device_type: str) -> None:
        self.device_type, self.bytes = device_type, None

    def __enter__(self) -> LoadMemory:
        if self.device_type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current resident set
                self._before = _status_bytes("VmRSS")
            except OSError:  # not Linux (a laptop's macOS): no figure, the run goes on
                self._before = None
        return self

    def page_in(self, model) -> None:
        """On CPU, read every weight once before the figure is taken: transformers 5 maps a safetensors file and
        reads a weight from it only at its first use, so a plain load would otherwise count almost nothing (10 MB
        of a 252 MB model) and add the rest during the first step."""
        if self.device_type == "cuda":
            return
        import torch

        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                getattr(tensor, "ds_tensor", tensor).sum()  # a ZeRO-3 parameter's memory is its partition

    def __exit__(self, *exc) -> None:
        if self.device_type == "cuda":
            import torch

            self.bytes = torch.cuda.max_memory_allocated() - self._before
        elif self._before is not None:
            self.bytes = _status_bytes("VmHWM") - self._before


def _status_bytes(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")
