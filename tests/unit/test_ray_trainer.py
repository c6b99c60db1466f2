"""The lean trainer overrides private Ray Train methods: an upgrade that renames them must fail here."""

from __future__ import annotations

import inspect

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.controller.controller import TrainController
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

from orchestrator.train.ray_trainer import ControllerReporter, FixedWorkers, LeanTorchTrainer


def test_the_overridden_ray_methods_still_exist():
    assert "scaling_policy" in inspect.getsource(inspect.unwrap(TorchTrainer.fit))
    for name in ("_create_default_callbacks", "_initialize_and_run_controller"):
        assert hasattr(TorchTrainer, name)
    for name in ("after_controller_start", "_maybe_send_resource_request"):
        assert hasattr(FixedScalingPolicy, name)
    assert "after_controller_state_update" in inspect.getsource(TrainController._set_state)


def _callbacks(lean_cluster: bool) -> list:
    trainer = LeanTorchTrainer(lambda: None, lean_cluster=lean_cluster, board=None)
    return trainer._create_default_callbacks()


def test_a_local_cluster_runs_without_ray_data_the_cleaner_or_the_autoscaler():
    kinds = {type(callback) for callback in _callbacks(lean_cluster=True)}
    assert DatasetsCallback not in kinds and PlacementGroupCleanerCallback not in kinds


def test_a_shared_cluster_keeps_all_of_ray_train():
    kinds = {type(callback) for callback in _callbacks(lean_cluster=False)}
    assert DatasetsCallback in kinds and PlacementGroupCleanerCallback in kinds


def test_every_trainer_reports_its_controller_states():
    for lean_cluster in (True, False):
        assert ControllerReporter in {type(callback) for callback in _callbacks(lean_cluster)}


def test_fixed_workers_never_asks_an_autoscaler(monkeypatch):
    from ray.train import ScalingConfig

    policy = FixedWorkers(ScalingConfig(num_workers=2))
    policy.after_controller_start(train_run_context=None)
    decision = policy.make_decision_for_non_running_worker_group()
    assert decision.num_workers == 2 and policy._coordinator_client is None
