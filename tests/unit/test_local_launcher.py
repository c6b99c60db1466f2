"""The local backend's shutdown never hangs the command, even when Ray's own shutdown does."""

import atexit
import threading
from types import SimpleNamespace

import ray

from orchestrator.launch import local


def test_a_hanging_ray_shutdown_is_bounded_and_the_cluster_killed(monkeypatch):
    killed, release = [], threading.Event()

    class FakeMonitor:  # Ray's autoscaler monitor, which Ray's own shutdown waits a second on
        def kill(self):
            killed.append("monitor")

        def wait(self):
            pass

    class FakeNode:
        all_processes = {"monitor": [SimpleNamespace(process=FakeMonitor())]}

        def kill_all_processes(self, check_alive, allow_graceful):
            killed.append((check_alive, allow_graceful))

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray._private.worker, "_global_node", FakeNode())
    # stands in for Ray's stuck close()
    monkeypatch.setattr(ray, "shutdown", lambda: (killed.append("shutdown"), release.wait(30)))
    unregistered = []
    monkeypatch.setattr(atexit, "unregister", unregistered.append)
    local.stop(timeout_s=0.2)
    release.set()
    assert killed == ["monitor", "shutdown", (False, False)]
    assert unregistered  # Ray's exit hook would wait on the same lock


def test_the_embedded_cluster_is_always_a_new_one(monkeypatch):
    """A bare ray.init() would join a cluster `ray start` left in /tmp/ray, dead or alive."""
    from orchestrator.config.schema import ClusterConfig

    calls, watched = [], []

    class FakeNode:
        node_ip_address = "127.0.0.1"
        all_processes = {"raylet": [type("Info", (), {"process": type("Popen", (), {"pid": 4242})})]}

    monkeypatch.setattr("orchestrator.launch.warm.running", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray._private.worker, "_global_node", FakeNode())
    monkeypatch.setattr("orchestrator.launch.reaper.watch", watched.append)
    assert local.start(ClusterConfig(num_workers=2), lean=True) is True
    assert calls[0]["address"] == "local" and calls[0]["include_dashboard"] is False
    assert calls[0]["_system_config"] == {"prestart_worker_first_driver": False}  # no idle workers nothing can use
    assert watched == [[4242]]  # the reaper watches the cluster's processes


def test_a_warm_cluster_is_joined_and_left_running(monkeypatch, capsys):
    from orchestrator.config.schema import ClusterConfig
    from orchestrator.launch import warm

    calls, tokens, watched, killed = [], [], [], []
    record = {"address": "127.0.0.1:6380", "token": "t0k3n", "pid": 1, "started": 0.0, "num_cpus": 2, "log": "x"}
    monkeypatch.setattr(warm, "running", lambda: record)
    monkeypatch.setattr(warm, "use_token", tokens.append)
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr("orchestrator.launch.reaper.watch", watched.append)
    assert local.start(ClusterConfig(num_workers=2)) is True
    assert calls[0]["address"] == "127.0.0.1:6380" and tokens == ["t0k3n"]
    assert calls[0]["runtime_env"]["env_vars"]["RAY_ADDRESS"] == "127.0.0.1:6380"
    assert watched == []  # no reaper: the cluster outlives this command
    assert "joined the warm local Ray cluster at 127.0.0.1:6380" in capsys.readouterr().out

    class FakeNode:
        def kill_all_processes(self, **kwargs):
            killed.append(kwargs)

    monkeypatch.setattr(ray._private.worker, "_global_node", FakeNode())
    monkeypatch.setattr(ray, "shutdown", lambda: calls.clear())
    local.stop(timeout_s=5)
    assert killed == [] and not calls  # disconnected, nothing killed


def test_every_process_of_the_job_is_told_its_own_cluster(monkeypatch):
    """Ray's state API (the Train placement-group cleaner) otherwise fails on "multiple active Ray instances"."""
    import os

    from orchestrator.config.schema import ClusterConfig

    seen = {}

    def init(**kwargs):
        seen.update(port=os.environ["RAY_GCS_SERVER_PORT"], env=kwargs["runtime_env"]["env_vars"])

    monkeypatch.setattr("orchestrator.launch.warm.running", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    node = type("Node", (), {"all_processes": {}, "node_ip_address": "127.0.0.1"})()
    monkeypatch.setattr(ray._private.worker, "_global_node", node)
    monkeypatch.setattr("orchestrator.launch.reaper.watch", lambda pids: None)
    local.start(ClusterConfig(num_workers=2))
    assert seen["env"]["RAY_ADDRESS"].endswith(f":{seen['port']}")
    assert "RAY_GCS_SERVER_PORT" not in os.environ  # only the embedded head reads it


def test_preflight_refuses_more_cpus_or_gpus_than_this_machine_has(monkeypatch):
    from orchestrator.config.schema import ClusterConfig

    monkeypatch.setattr(local, "available_cpus", lambda: 2)
    monkeypatch.setattr(local, "visible_gpus", lambda: 0)
    assert local.preflight(ClusterConfig(num_workers=2, cpus_per_worker=1)) == []
    [cpus] = local.preflight(ClusterConfig(num_workers=64, cpus_per_worker=1))
    assert cpus.startswith("cluster.num_workers=64 x cluster.cpus_per_worker=1 = 64 CPUs, but this machine has 2")
    [gpus] = local.preflight(ClusterConfig(num_workers=2, gpus_per_worker=1))
    assert "= 2 GPUs, but this machine has 0" in gpus
