"""summary.json: what a finished run measured, written once by rank 0 at the end (rundir/ owns the file).

Final metrics (the task's, prefixed `final_`), steps and tokens, wall time, where the data stood, the world
and its nodes, peak memory and measured model-state bytes per rank beside the plan's prediction, steady
throughput with MFU and HFU (train/throughput.py), the checkpoints' cost, the start-up breakdown, and what
the loop's hooks add (compression's report, for one).
"""

from __future__ import annotations

import resource
import statistics


def peak_memory_bytes(device_type: str) -> int:
    """CUDA: peak allocated by torch. CPU: the process's peak resident set size."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def checkpoint_cost(sealed: list[tuple[float, int]]) -> dict:
    """Median seconds the checkpoints of this run blocked the steps, and the bytes of the last one."""
    if not sealed:
        return {}
    return {"checkpoint_write_s": statistics.median(s for s, _ in sealed), "checkpoint_bytes": sealed[-1][1]}


def gather_per_rank(device_type: str, measured_model_states: dict, load_memory_bytes: int) -> dict:
    """A collective (every rank calls it): each rank's peak memory, measured model states, the memory its
    model's load peaked at, and its Ray node."""
    import ray
    import torch.distributed as dist

    world = dist.get_world_size()
    peak, measured_all, loads, nodes = [None] * world, [None] * world, [None] * world, [None] * world
    dist.all_gather_object(peak, peak_memory_bytes(device_type))
    dist.all_gather_object(measured_all, measured_model_states)
    dist.all_gather_object(loads, load_memory_bytes)
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    return {"node_id_per_rank": nodes, "peak_memory_bytes_per_rank": peak,
            "measured_model_state_bytes_per_rank": measured_all, "load_memory_bytes_per_rank": loads}
