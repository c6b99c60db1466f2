"""Shared fixtures: isolation for every test, one composed-and-shrunk config, one Ray cluster.

Every test runs in its own temporary folder with W&B offline and a per-session data cache
(so the corpus is tokenized once per test session, not once per test). Tests that need Ray
share one embedded cluster for the session: starting it costs seconds on these machines.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import TINY

TIERS = {"unit": "unit", "distributed": "distributed", "e2e": "e2e"}
"""tests/<folder>/ -> the marker every test in it carries (pyproject.toml declares them)."""


def pytest_collection_modifyitems(items):
    for item in items:
        tier = TIERS.get(Path(str(item.fspath)).parent.name)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("orchestrator-cache"))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, data_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORCHESTRATOR_CACHE", data_cache)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path


@pytest.fixture
def compose_tiny():
    """Compose the real config from conf/, shrunk for tests, with extra overrides on top."""
    from orchestrator.config.compose import compose

    return lambda *overrides: compose([*TINY, *overrides])


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray cluster (2 CPUs, loopback) shared by every distributed test."""
    import ray

    from orchestrator.config.schema import ClusterConfig
    from orchestrator.launch import local

    # Workers' output stays in Ray's log files: a long-lived driver forwarding it can hang in
    # ray.shutdown() (the log subscriber's poll never returns); failures still surface as exceptions.
    started = local.start(ClusterConfig(num_workers=2, cpus_per_worker=1), log_to_driver=False)
    yield ray
    if started:
        local.stop(timeout_s=15)  # Ray's shutdown sometimes hangs at the end of a long session


@pytest.fixture
def spawn():
    """subprocess.Popen for a CLI run that must not outlive its test: when an assertion fails
    first, the driver is SIGKILLed at teardown (its reaper ends its Ray cluster), so a failed
    test leaves no training run behind to slow down the tests after it."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], **kwargs) -> subprocess.Popen:
        started.append(subprocess.Popen(args, **kwargs))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
