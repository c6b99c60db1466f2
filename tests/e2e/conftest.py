"""What the e2e tier shares per session: the reference runs (fault tolerance, elastic resume, compress, the CLI's
ZeRO-3 check), the reference model fine-tuned on chats (SFT, then DPO) and the learning-rate grid (compare and
multirun)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import LR_GRID, REFERENCE_JOB, SECRETS, TINY, once_per_run, orchestrator, sft_args, write_chats


@pytest.fixture(scope="session")
def lr_grid(tmp_path_factory) -> Path:
    """`orchestrator train -m` over three learning rates with ASHA, one worker per trial (two trials at a
    time on a 2-CPU machine): the sweep folder. Run once per test run: a sweep costs a minute or two here."""
    return once_per_run(tmp_path_factory, "lr-grid", _lr_grid)


def _lr_grid(folder: Path) -> Path:
    sweep_dir = folder / "grid"
    command = [sys.executable, "-m", "orchestrator", "train", "-m", *TINY, "cluster.num_workers=1",
               "data.max_bytes=20000", f"optim.lr={','.join(LR_GRID)}", "optim.warmup_steps=2", "train.max_steps=10",
               "train.eval_every=2", "train.log_every=1", "sweep.scheduler=asha", "sweep.asha.grace_steps=2",
               "sweep.asha.reduction_factor=2", f"sweep.dir={sweep_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir


@dataclass(frozen=True)
class Run:
    run_dir: Path
    output: str
    """What the command printed (stdout, then stderr)."""


@dataclass(frozen=True)
class Reference(Run):
    ray_sessions: list[Path]
    """The Ray session folders (logs) the run created: its embedded cluster's."""
    stale_lock: Path
    """The DeepSpeed build lock a killed build would leave, laid before the run started."""


@pytest.fixture(scope="session")
def reference(tmp_path_factory, data_cache) -> Reference:
    """The test run's uninterrupted REFERENCE_JOB run (ZeRO-2, 30 steps), run once as users run it, with two
    preconditions other tests check on it: secrets in its environment, and a stale DeepSpeed build lock that
    would block every start if left. Tests that resume from it copy it first; compress writes beside it. Made
    alone: a plan calibrated from it predicts the step time of a run made alone."""
    return once_per_run(tmp_path_factory, "reference", lambda folder: _reference(folder, data_cache), alone=True)


def _reference(folder: Path, data_cache: str) -> Reference:
    from orchestrator.train.engine import extensions_dir

    lock = extensions_dir() / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    sessions_before = set(Path("/tmp/ray").glob("session_2*"))
    run_dir = folder / "run"
    env = {**os.environ, "ORCHESTRATOR_CACHE": data_cache, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           **SECRETS}
    result = orchestrator("train", *REFERENCE_JOB, f"run_dir={run_dir}", env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Reference(run_dir, result.stdout + result.stderr,
                     sorted(set(Path("/tmp/ray").glob("session_2*")) - sessions_before), lock)


@pytest.fixture(scope="session")
def reference_zero3(tmp_path_factory, data_cache) -> Run:
    """REFERENCE_JOB at ZeRO-3, with W&B off: elastic resume's ZeRO-3 reference and the CLI's ZeRO-3 check."""
    return once_per_run(tmp_path_factory, "reference-zero3", lambda folder: _reference_zero3(folder, data_cache))


def _reference_zero3(folder: Path, data_cache: str) -> Run:
    run_dir = folder / "run"
    env = {**os.environ, "ORCHESTRATOR_CACHE": data_cache}
    result = orchestrator("train", *REFERENCE_JOB, "zero=3", "logger.mode=disabled", f"run_dir={run_dir}", env=env,
                          timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Run(run_dir, result.stdout + result.stderr)


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory, reference) -> Path:
    """The reference model fine-tuned on write_chats' samples at ZeRO-2 on two workers, uninterrupted: its run
    directory (tests/e2e/test_sft.py checks it; tests/e2e/test_dpo.py aligns it)."""
    return once_per_run(tmp_path_factory, "sft-zero2", lambda folder: _finetuned(folder, reference.run_dir))


def _finetuned(folder: Path, reference_run: Path) -> Path:
    run_dir = folder / "run"
    chats = write_chats(folder / "chat.jsonl")
    result = orchestrator(*sft_args(reference_run / "model", chats, run_dir, "zero=2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "chat template: added <|im_end|>, <|im_start|>" in result.stdout
    return run_dir


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """One throwaway Slurm cluster (slurm-wlm + munge, as root; tests/slurm_cluster.py) for the session."""
    from tests.slurm_cluster import SlurmCluster

    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
