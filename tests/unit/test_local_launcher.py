"""The local backend's shutdown never hangs the command, even when Ray's own shutdown does."""

import atexit
import threading

import ray

from orchestrator.launch import local


def test_a_hanging_ray_shutdown_is_bounded_and_the_cluster_killed(monkeypatch):
    killed, release = [], threading.Event()

    class FakeNode:
        def kill_all_processes(self, check_alive, allow_graceful):
            killed.append((check_alive, allow_graceful))

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray._private.worker, "_global_node", FakeNode())
    monkeypatch.setattr(ray, "shutdown", lambda: release.wait(30))  # stands in for Ray's stuck close()
    unregistered = []
    monkeypatch.setattr(atexit, "unregister", unregistered.append)
    local.stop(timeout_s=0.2)
    release.set()
    assert killed == [(False, False)]
    assert unregistered  # Ray's exit hook would wait on the same lock


def test_the_embedded_cluster_is_always_a_new_one(monkeypatch):
    """A bare ray.init() would join a cluster `ray start` left in /tmp/ray, dead or alive."""
    from orchestrator.config.schema import ClusterConfig

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    assert local.start(ClusterConfig(num_workers=2)) is True
    assert calls[0]["address"] == "local" and calls[0]["dashboard_host"] == "127.0.0.1"
