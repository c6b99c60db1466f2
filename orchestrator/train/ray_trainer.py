"""Ray Train's TorchTrainer without the Ray components a fixed cluster does not use.

Every `TorchTrainer.fit()` in Ray 2.60 starts, besides the controller and the workers, a Ray Data
dataset manager and DataContext propagation (a `ray.data` import in every worker), an autoscaling
coordinator actor the controller waits on before it asks for workers, and a placement-group cleaner
whose shutdown waits on Ray's state API. On this 2-core machine they cost seconds of start-up and
about 12 s at exit (measured: a trivial training function entered at 16.2 s and `fit()` returned
12 s after it finished; without them 12.0 s and at once).

All three are dropped only for a plain run on a local cluster (`lean_cluster=True`): it cannot
autoscale, we hand Ray no datasets, and its placement group ends with its driver. So are Ray Train's
metrics callbacks, which feed the Ray dashboard's Prometheus metrics: a local run starts no dashboard.
Everywhere else (`ray`, `slurm`, `k8s`, and a sweep, whose cluster its trials share) the trainer keeps
Ray's own callbacks.

A lean run also keeps Ray Train's controller in the driver's own process (`run_controller_here`) instead of an
actor of its own: no process to start and no second import of Ray Train while the workers start (about 1.3 s
of a start-up here). Ray's worker group hands each worker its controller's actor handle, which the workers
use only for `ray.train.get_all_reported_checkpoints` (never called here); in the driver there is none, and
the handle is None. Ctrl-C and SIGTERM are the command's (train/preemption.py), not Ray's abort handler.

Every trainer's backend is `train/controller.py`'s torch-free `ProcessGroup` (Ray's TorchConfig made the
controller import torch before it asked for workers).

Every trainer, lean or not, also reports its controller's states to the progress board
(`ControllerReporter`), so the driver's watchdog can bound how long a worker group takes to start.

This overrides two private methods of Ray 2.60 (pinned in pyproject.toml);
tests/unit/test_ray_trainer.py fails if an upgrade renames them.
"""

from __future__ import annotations

from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.metrics import ControllerMetricsCallback, WorkerMetricsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from orchestrator.train.controller import ControllerReporter, FixedWorkers, ProcessGroup


class LeanTorchTrainer(DataParallelTrainer):
    """Ray's TorchTrainer with a torch-free backend config (train/controller.py)."""

    def __init__(self, *args, lean_cluster: bool, board, process_group_timeout_s: int = 1800, **kwargs):
        super().__init__(*args, backend_config=ProcessGroup(timeout_s=process_group_timeout_s), **kwargs)
        self._lean_cluster, self._board = lean_cluster, board

    def _create_default_callbacks(self) -> list:
        callbacks = [*super()._create_default_callbacks(), ControllerReporter(self._board)]
        if not self._lean_cluster:
            return callbacks
        unused = (DatasetsCallback, PlacementGroupCleanerCallback, ControllerMetricsCallback, WorkerMetricsCallback)
        return [callback for callback in callbacks if not isinstance(callback, unused)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if not self._lean_cluster:
            return super()._initialize_and_run_controller(**controller_init_kwargs)
        controller_init_kwargs["scaling_policy"] = FixedWorkers(self.scaling_config)
        return run_controller_here(controller_init_kwargs)


def run_controller_here(controller_init_kwargs: dict):
    """Ray Train's TrainController run to its end in this process; its Result."""
    import asyncio

    from ray.runtime_context import RuntimeContext
    from ray.train.v2._internal.execution.controller import TrainController

    actor_handle = RuntimeContext.current_actor
    RuntimeContext.current_actor = property(lambda context: None)  # a driver is no actor (see the module's notes)
    try:
        controller = TrainController(**controller_init_kwargs)
        asyncio.run(controller.run())
        return controller.get_result()
    finally:
        RuntimeContext.current_actor = actor_handle
