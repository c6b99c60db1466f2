"""What the distributed tier shares: one embedded Ray cluster, in the test process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def ray_cluster():
    """One embedded Ray cluster (2 CPUs, loopback) shared by the distributed tests a pytest process runs, and
    stopped after the last of them: an idle cluster costs a few percent of a core for the rest of the session."""
    import ray

    from orchestrator.config.schema import ClusterConfig
    from orchestrator.launch import local

    # Workers' output stays in Ray's log files: a long-lived driver forwarding it can hang in
    # ray.shutdown() (the log subscriber's poll never returns); failures still surface as exceptions.
    started = local.start(ClusterConfig(num_workers=2, cpus_per_worker=1), log_to_driver=False)
    yield ray
    if started:
        local.stop(timeout_s=15)  # Ray's shutdown sometimes hangs at the end of a long session
