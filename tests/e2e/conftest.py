"""The one learning-rate grid that the compare and multirun tests share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LR_GRID, TINY


@pytest.fixture(scope="session")
def lr_grid(tmp_path_factory) -> Path:
    """`orchestrator train -m` over four learning rates with ASHA, one worker per trial (two trials at a
    time on a 2-CPU machine): the sweep folder. Run once per session: a sweep costs a minute or two here."""
    sweep_dir = tmp_path_factory.mktemp("lr-grid") / "grid"
    command = [sys.executable, "-m", "orchestrator", "train", "-m", *TINY, "cluster.num_workers=1",
               "data.max_bytes=20000", f"optim.lr={','.join(LR_GRID)}", "optim.warmup_steps=2", "train.max_steps=10",
               "train.eval_every=2", "train.log_every=1", "sweep.scheduler=asha", "sweep.asha.grace_steps=2",
               "sweep.asha.reduction_factor=2", f"sweep.dir={sweep_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir
