"""What the sweep says while it runs, and how ASHA's verdict reaches a trial.

`TrialLines` prints one line per trial event (started, each evaluation, stopped early, completed,
failed) in place of Ray Tune's status table. `EarlyStopByRequest` is Ray Tune's ASHA with one
change: its STOP becomes a request in the trial's run directory (the STOP file saying
`early_stopped`), which every rank honours at its next step by finishing there: final
evaluation, model, summary with `status: early_stopped`, and a W&B run closed as finished. Tune
killing the trial instead would leave a crashed W&B run and no summary.
"""

from __future__ import annotations

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from orchestrator.config.schema import Config, SweepScheduler
from orchestrator.rundir import EARLY_STOP, SweepDir


class TrialLines(Callback):
    def __init__(self, metric: str) -> None:
        self._metric = metric

    def on_trial_start(self, iteration, trials, trial, **info):
        values = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in trial.config.items())
        _say(trial.trial_id, f"started: {values}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if isinstance(result.get(self._metric), float) and "status" not in result:
            _say(trial.trial_id, f"step {result['step']}: {self._metric} {result[self._metric]:.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("status") == "failed":
            _say(trial.trial_id, f"failed: {result.get('error')}")
        elif "status" in result:
            _say(trial.trial_id, f"{result['status'].replace('_', ' ')} at step {result['step']}: "
                                 f"{self._metric} {result[self._metric]:.4f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        _say(trial.trial_id, f"failed: {str(trial.error_file or 'see Ray logs')}")

    @staticmethod
    def asked_to_stop(trial_id: str, step: int) -> None:
        _say(trial_id, f"ASHA stops it (judged at step {step}): it finishes at the step its ranks are on")


def _say(trial_id: str, text: str) -> None:
    print(f"trial {trial_id} {text}", flush=True)


class EarlyStopByRequest(AsyncHyperBandScheduler):
    def __init__(self, sweep_dir: SweepDir, max_steps: int, **asha) -> None:
        super().__init__(**asha)
        self._sweep_dir, self._max_steps = sweep_dir, max_steps
        self._requested: set[str] = set()

    @classmethod
    def for_sweep(cls, cfg: Config, sweep_dir: SweepDir):
        """ASHA on the training step for sweep.scheduler=asha; None (Tune's first-in-first-out) otherwise."""
        if cfg.sweep.scheduler is not SweepScheduler.asha:
            return None
        return cls(sweep_dir, cfg.train.max_steps, time_attr="step", max_t=cfg.train.max_steps,
                   grace_period=cfg.sweep.asha.grace_steps, reduction_factor=cfg.sweep.asha.reduction_factor)

    def on_trial_result(self, tune_controller, trial, result):
        """Never Tune's STOP, which kills the trial: a trial at its last step ends by itself (stopping it there
        raced its final evaluation and summary, leaving a `failed` trial with no error), any other is asked."""
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision != TrialScheduler.STOP:
            return decision
        if result.get("step", self._max_steps) < self._max_steps and trial.trial_id not in self._requested:
            self._requested.add(trial.trial_id)
            self._sweep_dir.trial(trial.trial_id).request_stop(EARLY_STOP)
            TrialLines.asked_to_stop(trial.trial_id, result["step"])
        return TrialScheduler.CONTINUE
