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
