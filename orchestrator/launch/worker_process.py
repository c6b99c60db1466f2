"""What every Ray worker process of our jobs runs as it starts: Ray's job-level `worker_process_setup_hook`,
installed by the launchers that start or join Ray (launch/local.py, launch/ray_cluster.py).

- Stop requests and the orphan check (launch/worker_signals.py).
- In a rank's process (the job names its libraries in RANK_IMPORTS, train/driver.py's worker
  environment), their imports start in a background thread: DeepSpeed's engine and the model's transformers
  module take about 3 s of a cold start, which then overlap Ray Train's set-up of the worker group (actor
  creation, the process group), most of it waiting on other processes. The training function imports the same
  modules later and waits for whatever is not done yet. A copy of a resident launcher has them already.
"""

from __future__ import annotations

import importlib
import os
import threading

from orchestrator.launch import worker_signals

SETUP_HOOK = f"{__name__}.set_up"
"""What ray.init's runtime_env names as `worker_process_setup_hook`."""

RANK_IMPORTS = "ORCHESTRATOR_RANK_IMPORTS"
"""Comma-separated modules a rank imports before its first step."""


def set_up() -> None:
    worker_signals.install()
    names = [name for name in os.environ.get(RANK_IMPORTS, "").split(",") if name]
    if names:
        threading.Thread(target=_import, args=(names,), name="rank-imports", daemon=True).start()


def _import(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # the training function's own import says what is wrong
            return
