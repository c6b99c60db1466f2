"""Shared fixtures: isolation for every test, one composed-and-shrunk config, one Ray cluster, and what
pytest-xdist's two processes share.

Every test runs in its own temporary folder with W&B offline and a per-session data cache
(so the corpus is tokenized once per test run, not once per test). The distributed tests a process runs
share one embedded Ray cluster (tests/distributed/conftest.py): starting it costs seconds on these machines.

The suite runs in two pytest-xdist processes (pyproject.toml: `-n auto --dist loadfile`): most end-to-end
time is start-up spent waiting (Ray's processes, heartbeats, timeouts), so two tests at a time fill the two
cores. Each module is one unit of work (its module fixtures are built once; the Slurm tests are one module,
so one process holds the Slurm cluster); each process starts its own Ray cluster for the distributed tests it
runs. (Not `--dist loadgroup`: pytest-xdist 3.8 marks groups through Node._nodeid, which pytest 9.2 no
longer reads, so the groups silently fall apart.) Session products that
several units read (the reference runs, the learning-rate grid, the data cache) are built once per test run
by `tests.helpers.once_per_run`, whichever process needs them first.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import nullcontext
from pathlib import Path

import pytest

from tests.helpers import MACHINE, TINY, once_per_run

TIERS = {"unit": "unit", "distributed": "distributed", "e2e": "e2e"}
"""tests/<folder>/ -> the marker every test in it carries (pyproject.toml declares them)."""

def pytest_xdist_auto_num_workers(config) -> int:
    """Two processes, whatever the machine: every test is sized for this project's 2-core, 24 GiB machines
    (each run starts a Ray cluster and two workers), and more at once would overcommit them."""
    return min(2, os.cpu_count() or 1)


def pytest_itemcollected(item):
    """Each test's tier marker, set as it is collected: before any plugin's `pytest_collection_modifyitems`
    (`-m` selects there, and pytest does not promise the order of those hooks)."""
    tier = TIERS.get(Path(str(item.fspath)).parent.name)
    if tier:
        item.add_marker(getattr(pytest.mark, tier))


def pytest_collection_modifyitems(items):
    # Longest units first, so the two processes finish together: the slow modules, then the distributed
    # tier, then the rest (xdist hands out units in this order; see --no-loadscope-reorder).
    items.sort(key=lambda item: (0 if item.get_closest_marker("slow") and item.get_closest_marker("e2e") else
                                 1 if item.get_closest_marker("distributed") else
                                 2 if item.get_closest_marker("e2e") else 3))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Setup, call and teardown of a distributed or end-to-end test under the machine's shared lock, or alone
    (tests.helpers.MachineShare); unit tests are light and take no lock."""
    heavy = item.get_closest_marker("distributed") or item.get_closest_marker("e2e")
    MACHINE.attach(item.config._tmp_path_factory.getbasetemp().parent)  # this run's folder, shared by processes
    with (MACHINE.alone() if item.get_closest_marker("alone") else MACHINE.shared()) if heavy else nullcontext():
        yield


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
    """One data cache for the run (the pipeline locks each prepared dataset, so processes share it safely)."""
    return str(once_per_run(tmp_path_factory, "orchestrator-cache", lambda folder: folder))


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
