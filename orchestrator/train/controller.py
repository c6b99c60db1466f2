"""Everything the Ray Train controller process unpickles from us, with no torch import.

Ray Train runs its controller in a process of its own, which unpickles the trainer's backend config and
callbacks before it asks for workers. Ray's TorchConfig lives in a module that imports torch (about 1.5 s
of a core here, on the critical path of every start-up, while the workers compete for the same cores),
though the controller itself never touches a tensor. `ProcessGroup` is TorchConfig's job done from here:
the controller only tells the workers to set up their process group, and the functions it sends them
import torch where they run. The worker-side setup is still Ray's own (`_setup_torch_process_group`).
tests/unit/test_ray_trainer.py fails if this module, or unpickling what it defines, imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.train._internal.utils import get_address_and_port
from ray.train.backend import Backend, BackendConfig
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
from ray.train.v2._internal.util import TrainingFramework


@dataclass
class ProcessGroup(BackendConfig):
    """One torch process group over the workers: gloo on CPUs, NCCL on GPUs, created from MASTER_ADDR/PORT."""

    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return ProcessGroupBackend

    @property
    def train_func_context(self):
        return CudaDevice

    @property
    def framework(self):
        return TrainingFramework.TORCH


class CudaDevice:
    """Around the training function on each worker: Ray's TorchConfigContextManager (the worker's GPU becomes
    the default CUDA device), imported where it runs: its module imports torch, which the driver does not."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._ray = TorchConfigContextManager()
        return self._ray.__enter__()

    def __exit__(self, kind, value, traceback):
        return self._ray.__exit__(kind, value, traceback)


class ProcessGroupBackend(Backend):
    share_cuda_visible_devices = True  # as Ray's torch backend: workers on a node see each other's GPUs

    def on_start(self, worker_group, backend_config: ProcessGroup) -> None:
        backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        address, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_rendezvous, address=address, port=port)
        ray.get([worker_group.execute_single_async(rank, _init_process_group, backend=backend, world_rank=rank,
                                                   world_size=len(worker_group), init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: ProcessGroup) -> None:
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        timeout_s = float(os.environ.get(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                         DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S))
        try:
            ray.get(worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1),
                    timeout=timeout_s)
        except GetTimeoutError:
            print(f"warning: the workers' process group did not shut down in {timeout_s:.0f}s", flush=True)


def _set_rendezvous(address: str, port: int) -> None:
    """On each worker: where rank 0 listens, and the ranks torch.distributed reads from the environment."""
    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    _set_torch_distributed_env_vars()


def _init_process_group(**kwargs) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(destroy_process_group=destroy_process_group)


class FixedWorkers(FixedScalingPolicy):
    """Always exactly scaling_config.num_workers, with no autoscaler to ask for them."""

    def after_controller_start(self, train_run_context) -> None:
        pass  # the base class creates the autoscaling coordinator actor here and waits on it

    def _maybe_send_resource_request(self) -> None:
        pass


class ControllerReporter(ControllerCallback):
    """Runs in the controller: tells the progress board (an actor handle) each state it enters, and its process."""

    def __init__(self, board) -> None:
        self._board = board

    def after_controller_state_update(self, previous_state, current_state) -> None:
        import psutil

        pid = os.getpid()
        self._board.controller.remote(type(current_state).__name__, pid, psutil.Process(pid).create_time(),
                                      ray.get_runtime_context().get_node_id())
