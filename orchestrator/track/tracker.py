"""Rank 0's tracker: every logged step goes to metrics.jsonl and to the W&B run, identically.

metrics.jsonl is the tool's own record (compare, tests and resume read it); W&B is for people.
Both receive the same dict, so the two never disagree. Only rank 0 constructs a Tracker.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from orchestrator.config.schema import LoggerConfig, WandbMode
from orchestrator.rundir import RunDir


class Tracker:
    """W&B starts in a background thread (its service process takes seconds to come up), so the first
    training steps run meanwhile; the first call that needs the run waits for it."""

    def __init__(self, run_dir: Path, logger: LoggerConfig, run_id: str, run_name: str, config: dict):
        self.metrics_path = RunDir(run_dir).metrics
        self._metrics = self.metrics_path.open("a", buffering=1)  # line-buffered: readable while running
        self._wandb = None
        self._last_step = 0
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None
        if logger.mode is not WandbMode.disabled:
            self._starting = threading.Thread(target=self._start_wandb, name="wandb-init", daemon=True,
                                              args=(run_dir, logger, run_id, run_name, config))
            self._starting.start()

    def _start_wandb(self, run_dir: Path, logger: LoggerConfig, run_id: str, run_name: str, config: dict) -> None:
        try:
            import wandb

            self._wandb = wandb.init(
                dir=str(run_dir),
                mode=logger.mode.value,
                project=logger.project,
                entity=logger.entity,
                group=logger.group,
                job_type=logger.job_type,
                tags=list(logger.tags),
                id=run_id,
                name=run_name,
                resume="allow",
                config=config,
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            )
        except BaseException as error:  # raised again in the training thread, where it ends the run
            self._start_error = error

    def _run(self):
        """The W&B run once it has started (None when disabled); its start-up error, raised here."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._start_error is not None:
                raise self._start_error
        return self._wandb

    def log(self, step: int, metrics: dict) -> None:
        record = {"step": step, **metrics}
        self._metrics.write(json.dumps(record) + "\n")
        self._last_step = step
        if self._run() is not None:
            self._wandb.log(metrics, step=step)

    def finish(self, summary: dict) -> None:
        """The summary; each confusion matrix in it (task=classify) also as a W&B table at the last step."""
        if self._run() is not None:
            import wandb

            tables = {key: wandb.Table(columns=["true \\ predicted", *value["labels"]],
                                       data=[[label, *row] for label, row in
                                             zip(value["labels"], value["rows_true_columns_predicted"], strict=True)])
                      for key, value in summary.items() if key.endswith("_confusion_matrix")}
            if tables:
                self._wandb.log(tables, step=self._last_step)
            self._wandb.summary.update(summary)
        self.close()

    def close(self) -> None:
        self._metrics.close()
        if self._run() is not None:
            self._wandb.finish()


def track_compression(run_dir: Path, logger: LoggerConfig, report: dict, folder: Path) -> None:
    """A W&B run for one `orchestrator compress`, in the training run's group (its name when it has none):
    one logged step per pass, the report's top-level numbers as its summary."""
    if logger.mode is WandbMode.disabled:
        return
    import wandb

    run = wandb.init(dir=str(folder), mode=logger.mode.value, project=logger.project, entity=logger.entity,
                     group=logger.group or run_dir.name, job_type="compress", tags=list(logger.tags),
                     name=f"{run_dir.name}-{report['pipeline']}", config={"compress": report["config"]},
                     settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
    for i, row in enumerate(report["passes"]):
        run.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=i + 1)
    run.summary.update({k: v for k, v in report.items() if isinstance(v, (int, float, bool))})
    run.finish()
