"""Facts about the machine this process runs on, read without torch or Ray: the GPUs the NVIDIA driver
exposes, the CPUs this process may use, the host's memory, and a free loopback port. The one place
that reads them, so the planner, the validator and the launchers agree on what the machine has.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def visible_gpus() -> int:
    """GPUs this machine exposes, without importing torch (NVIDIA driver's /proc entries)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what a container, cgroup cpuset or taskset grants)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_memory_bytes() -> int | None:
    """The host's total memory (/proc/meminfo), or None where there is none to read."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    return int(meminfo.read_text().split("MemTotal:")[1].split()[0]) * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
