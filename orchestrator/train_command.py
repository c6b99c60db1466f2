"""`orchestrator train`: run one composed config through the driver with the hooks every training run gets:
compression's training-time passes (`compress=gradual50`, `compress=qat_int8`; no-ops for `compress=none`).
A sweep's trial (sweep/trial.py) adds its Tune reports to these."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config.schema import Config


def standard_hooks() -> tuple:
    from orchestrator.compress.hooks import TrainingHooks
    from orchestrator.models.adapters import Adapters

    return (Adapters, TrainingHooks)


def run(cfg: Config) -> Path:
    from orchestrator.train.driver import train
    from orchestrator.train.preemption import interrupt_on_signals
    from orchestrator.train.startup import Startup

    with interrupt_on_signals():  # until training starts; then stop requests (train/preemption.py)
        run_dir = train(cfg, hooks=standard_hooks(), startup=Startup.of_this_command())
    print(f"run directory: {run_dir}")
    return run_dir
