"""Ray Train's TorchTrainer without the Ray components a fixed cluster does not use.

Every `TorchTrainer.fit()` in Ray 2.60 starts, besides the controller and the workers, a Ray Data
dataset manager and DataContext propagation (a `ray.data` import in every worker), an autoscaling
coordinator actor the controller waits on before it asks for workers, and a placement-group cleaner
whose shutdown waits on Ray's state API. On this 2-core machine they cost seconds of start-up and
about 12 s at exit (measured: a trivial training function entered at 16.2 s and `fit()` returned
12 s after it finished; without them 12.0 s and at once).

All three are dropped only for a plain run on a local cluster (`lean_cluster=True`): it cannot
autoscale, we hand Ray no datasets, and its placement group ends with its driver. Everywhere else
(`ray`, `slurm`, `k8s`, and a sweep, whose cluster its trials share) the trainer is Ray's own.

Every trainer, lean or not, also reports its controller's states to the progress board
(`ControllerReporter`), so the driver's watchdog can bound how long a worker group takes to start.

This overrides two private methods of Ray 2.60 (pinned in pyproject.toml);
tests/unit/test_ray_trainer.py fails if an upgrade renames them.
"""

from __future__ import annotations

import os

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy


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
        import ray

        pid = os.getpid()
        self._board.controller.remote(type(current_state).__name__, pid, psutil.Process(pid).create_time(),
                                      ray.get_runtime_context().get_node_id())


class LeanTorchTrainer(TorchTrainer):
    def __init__(self, *args, lean_cluster: bool, board, **kwargs):
        super().__init__(*args, **kwargs)
        self._lean_cluster, self._board = lean_cluster, board

    def _create_default_callbacks(self) -> list:
        callbacks = [*super()._create_default_callbacks(), ControllerReporter(self._board)]
        if not self._lean_cluster:
            return callbacks
        unused = (DatasetsCallback, PlacementGroupCleanerCallback)
        return [callback for callback in callbacks if not isinstance(callback, unused)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if self._lean_cluster:
            controller_init_kwargs["scaling_policy"] = FixedWorkers(self.scaling_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
