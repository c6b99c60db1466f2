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

This overrides two private methods of Ray 2.60 (pinned in pyproject.toml);
tests/unit/test_ray_trainer.py fails if an upgrade renames them.
"""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy


class FixedWorkers(FixedScalingPolicy):
    """Always exactly scaling_config.num_workers, with no autoscaler to ask for them."""

    def after_controller_start(self, train_run_context) -> None:
        pass  # the base class creates the autoscaling coordinator actor here and waits on it

    def _maybe_send_resource_request(self) -> None:
        pass


class LeanTorchTrainer(TorchTrainer):
    def __init__(self, *args, lean_cluster: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self._lean_cluster = lean_cluster

    def _create_default_callbacks(self) -> list:
        callbacks = super()._create_default_callbacks()
        if not self._lean_cluster:
            return callbacks
        unused = (DatasetsCallback, PlacementGroupCleanerCallback)
        return [callback for callback in callbacks if not isinstance(callback, unused)]

    def _initialize_and_run_controller(self, **controller_init_kwargs):
        if self._lean_cluster:
            controller_init_kwargs["scaling_policy"] = FixedWorkers(self.scaling_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
