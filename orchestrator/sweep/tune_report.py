"""A sweep trial's reports to Ray Tune, plugged into the training run from here (the loop knows nothing of Tune):
every evaluation, on every rank, goes to `ray.train.report` (ASHA judges the trial on it, its time axis the
step), and Ray Train's TuneReportCallback hands the reports from the trial's workers to its Tune trial."""

from __future__ import annotations

from orchestrator.train.hooks import LoopHooks


class TuneReport(LoopHooks):
    def __init__(self, cfg) -> None:
        pass

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report({"step": step, **metrics})


def run_callbacks() -> list:
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]
