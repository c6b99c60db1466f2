"""The lean trainer overrides private Ray Train methods: an upgrade that renames them must fail here.
And neither the driver nor what the Train controller unpickles from us imports torch (a second or more of
every start-up, and its memory: only the workers train)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import ray.cloudpickle
from ray.train import ScalingConfig
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.metrics import ControllerMetricsCallback, WorkerMetricsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.controller.controller import TrainController
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from orchestrator.train.ray_trainer import ControllerReporter, FixedWorkers, LeanTorchTrainer


def test_the_overridden_ray_methods_still_exist():
    assert "scaling_policy" in inspect.getsource(inspect.unwrap(DataParallelTrainer.fit))
    for name in ("_create_default_callbacks", "_initialize_and_run_controller"):
        assert hasattr(DataParallelTrainer, name)
    for name in ("after_controller_start", "_maybe_send_resource_request"):
        assert hasattr(FixedScalingPolicy, name)
    assert "after_controller_state_update" in inspect.getsource(TrainController._set_state)


def _trainer(lean_cluster: bool) -> LeanTorchTrainer:
    return LeanTorchTrainer(lambda: None, lean_cluster=lean_cluster, board=None,
                            scaling_config=ScalingConfig(num_workers=2))


def _callbacks(lean_cluster: bool) -> list:
    return _trainer(lean_cluster)._create_default_callbacks()


LOCAL_ONLY = (DatasetsCallback, PlacementGroupCleanerCallback, ControllerMetricsCallback, WorkerMetricsCallback)


def test_a_local_cluster_runs_without_ray_data_the_cleaner_the_metrics_or_the_autoscaler():
    kinds = {type(callback) for callback in _callbacks(lean_cluster=True)}
    assert not kinds & set(LOCAL_ONLY)


def test_a_shared_cluster_keeps_all_of_ray_train():
    kinds = {type(callback) for callback in _callbacks(lean_cluster=False)}
    assert set(LOCAL_ONLY) <= kinds


def test_the_train_controller_unpickles_our_trainer_without_importing_torch():
    sent = ray.cloudpickle.dumps([(trainer.train_run_context, trainer._create_default_callbacks(),
                                   FixedWorkers(trainer.scaling_config))
                                  for trainer in (_trainer(lean_cluster=True), _trainer(lean_cluster=False))])
    script = ("import sys, ray.cloudpickle\n"
              "for context, callbacks, policy in ray.cloudpickle.loads(sys.stdin.buffer.read()):\n"
              "    print(type(context.backend_config.backend_cls()).__name__)\n"
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], input=sent, capture_output=True, timeout=60)
    assert done.stdout.decode().split() == ["ProcessGroupBackend", "ProcessGroupBackend", "False"], \
        done.stderr.decode()[-2000:]


def test_the_driver_builds_its_trainer_and_hooks_without_importing_torch():
    script = ("import sys\n"
              "from ray.train import ScalingConfig\n"
              "from orchestrator.data import pipeline, shards\n"
              "from orchestrator.train import driver\n"
              "from orchestrator.train.ray_trainer import LeanTorchTrainer\n"
              "from orchestrator.train_command import standard_hooks\n"
              "standard_hooks()\n"
              "for lean in (True, False):\n"
              "    trainer = LeanTorchTrainer(lambda: None, lean_cluster=lean, board=None,\n"
              "                               scaling_config=ScalingConfig(num_workers=2))\n"
              "    trainer.train_run_context.backend_config.train_func_context\n"
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False"], done.stderr[-2000:]


def test_every_trainer_reports_its_controller_states():
    for lean_cluster in (True, False):
        assert ControllerReporter in {type(callback) for callback in _callbacks(lean_cluster)}


def test_fixed_workers_never_asks_an_autoscaler(monkeypatch):
    from ray.train import ScalingConfig

    policy = FixedWorkers(ScalingConfig(num_workers=2))
    policy.after_controller_start(train_run_context=None)
    decision = policy.make_decision_for_non_running_worker_group()
    assert decision.num_workers == 2 and policy._coordinator_client is None
