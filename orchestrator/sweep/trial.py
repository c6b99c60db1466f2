"""One sweep trial: a whole `orchestrator train` run, driven from inside a Ray Tune trial.

This is Ray Train v2's supported Tune pattern: the Tune trial is a function that builds and fits
a `TorchTrainer` (here: the driver's `train`, unchanged), reserving nothing itself, so the
workers' bundles are placed by Ray Train alone. The trial's config is composed afresh from the
sweep's plain overrides plus the trial's values (config groups can be swept too), and pinned to
a stable run directory, <sweep_dir>/trials/<trial_id>/, so a restarted trial resumes its own
checkpoints and W&B run. Every evaluation reaches Tune (the scheduler's time axis is the step).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from orchestrator.compare.runs import final_val_metrics
from orchestrator.config.overrides import as_override, as_overrides
from orchestrator.errors import ConfigError, Preempted, TrainingError
from orchestrator.rundir import RunDir, SweepDir


def trial_config(base_overrides: list[str], config_file: str | None, values: dict[str, Any], sweep_dir: Path,
                 trial_id: str):
    """The trial's whole config: the sweep's command line, the trial's values, its run directory and W&B ids."""
    from orchestrator.config.compose import compose

    cfg = compose([*base_overrides, *(as_override(key, value) for key, value in values.items())], config_file)
    sweep = dataclasses.replace(cfg.sweep, dir=str(sweep_dir), trial_id=trial_id, trial_overrides=as_overrides(values))
    logger = dataclasses.replace(cfg.logger, group=cfg.sweep.name, job_type="trial",
                                 run_id=f"{cfg.sweep.name}-{trial_id}"[:64])
    return dataclasses.replace(cfg, sweep=sweep, logger=logger, run_dir=str(SweepDir(sweep_dir).trial(trial_id).path))


def run_trial(values: dict[str, Any], base_overrides: list[str], config_file: str | None, sweep_dir: str) -> dict:
    """Tune's trainable. Returns the trial's outcome as its last result; a failure is an outcome too
    (status `failed` and the one-line root cause), so the sweep goes on and records it."""
    from ray import tune

    from orchestrator.sweep.tune_report import TuneReport, run_callbacks
    from orchestrator.train.driver import train
    from orchestrator.train_command import standard_hooks

    trial_id = tune.get_context().get_trial_id()
    started = time.monotonic()
    try:
        cfg = trial_config(base_overrides, config_file, values, Path(sweep_dir), trial_id)
        ran_before = RunDir(Path(cfg.run_dir)).summary_file.exists()
        run_dir = train(cfg, hooks=(*standard_hooks(), TuneReport), callbacks=run_callbacks())
    except (ConfigError, TrainingError, Preempted) as error:
        return {"status": "failed", "error": str(error).splitlines()[0] if str(error) else type(error).__name__}
    if not ran_before:  # a resumed sweep re-entering an ended trial keeps the wall time it took
        RunDir(run_dir).trial_record.write_text(json.dumps({"id": trial_id, "wall_s": time.monotonic() - started}))
    return last_result(run_dir)


def last_result(run_dir: Path) -> dict:
    """The ended run's last result for Tune, named as its evaluations report them: every validation metric of
    its last evaluation (val_loss, val_accuracy, whatever its task logs) and its last train loss."""
    summary = RunDir(run_dir).summary()
    return {"status": summary["status"], "step": summary["steps"], "loss": summary["final_train_loss"],
            **final_val_metrics(summary)}
