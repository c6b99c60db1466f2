"""The run directory: its layout, its events, stop requests and the run's state. The only module that
names its files; every command and test that reads or writes a run goes through `RunDir`.

    <run_dir>/config.yaml      the resolved config, secrets redacted (written before any worker starts)
    <run_dir>/run.json         the W&B run id, kept across reruns and restarts
    <run_dir>/metrics.jsonl    one JSON object per logged step (rank 0's tracker appends it)
    <run_dir>/events.jsonl     one line per start, resume, preemption, finish and failure
    <run_dir>/summary.json     final metrics, written once at the end (its presence means the run ended)
    <run_dir>/STOP             a stop request: its text says why (a signal's name, or EARLY_STOP)
    <run_dir>/checkpoints/     checkpoints (rundir/checkpoints.py owns that layout)
    <run_dir>/model/           the final model in Hugging Face format
    <run_dir>/compressed/<pipeline>/  a model `orchestrator compress` made, with compress_report.json
    <run_dir>/wandb/           the W&B run; <run_dir>/.ray/ Ray Train's storage
    <run_dir>/trial.json       in a sweep's trial: its id and wall time (SweepDir below holds the sweep's files)

State is read in one place (`RunDir.status`): a summary means the run ended (its status says how), else
the newest event says whether the command that ran it was preempted or failed, else it is running.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

EARLY_STOP = "early_stopped"
"""STOP file text that ends the run as finished early (a sweep's scheduler), not preempted; also the summary's
status and the closing event of such a run."""
COMPRESS_REPORT = "compress_report.json"
"""In a model folder: what the compression passes that made it did and measured."""


class Event(str, Enum):
    start = "start"
    resume = "resume"
    preempted = "preempted"
    finished = "finished"
    early_stopped = EARLY_STOP
    failed = "failed"


class Status(str, Enum):
    running = "running"
    completed = "completed"
    early_stopped = EARLY_STOP
    preempted = "preempted"
    failed = "failed"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def events_file(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def stop_file(self) -> Path:
        return self.path / "STOP"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model(self) -> Path:
        return self.path / "model"

    def compressed(self, pipeline: str) -> Path:
        """Where `orchestrator compress` writes the model a pipeline made, with its COMPRESS_REPORT."""
        return self.path / "compressed" / pipeline

    def compress_reports(self) -> list[dict]:
        return [_json(path) for path in sorted(self.path.glob(f"compressed/*/{COMPRESS_REPORT}"))]

    @property
    def ray_storage(self) -> Path:
        return self.path / ".ray"

    @property
    def trial_record(self) -> Path:
        """In a sweep trial's run directory: its id and the wall seconds of the attempt that ended it."""
        return self.path / "trial.json"

    def trial_record_field(self, key: str, default=None):
        return _json(self.trial_record).get(key, default)

    def is_run(self) -> bool:
        """config.yaml and run.json are written before training starts; metrics.jsonl from the first step."""
        return self.config.is_file() and (self.record.is_file() or self.metrics.is_file())

    # --- metrics and summary ---
    def rows(self) -> list[dict]:
        """metrics.jsonl's rows; a torn last line (a run still writing it, or a rank killed mid-write) is skipped."""
        return _rows(self.metrics)

    def last_logged_step(self) -> int:
        rows = self.rows()
        return rows[-1]["step"] if rows and "step" in rows[-1] else 0

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows logged after `last_step` (work redone after a resume), so each step appears once."""
        if not self.metrics.exists():
            return
        kept = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= last_step]
        _write_atomically(self.metrics, "".join(line + "\n" for line in kept))

    def summary(self) -> dict:
        """summary.json, or {} while the run has not ended."""
        return _json(self.summary_file)

    def write_summary(self, summary: dict) -> None:
        _write_atomically(self.summary_file, json.dumps(summary, indent=2))

    def finished(self, step: int, max_steps: int) -> bool:
        """The run wrote its summary at its last step: max_steps, or earlier when a sweep stopped it early."""
        return self.summary_file.exists() and (step >= max_steps or self.summary().get("status") == EARLY_STOP)

    # --- events and state ---
    def append_event(self, event: Event, step: int, **extra) -> None:
        with open(self.events_file, "a") as f:
            f.write(json.dumps({"event": event.value, "step": step, "time": time.time(), **extra}) + "\n")

    def events(self) -> list[dict]:
        return _rows(self.events_file)

    def last_event(self) -> dict:
        events = self.events()
        return events[-1] if events else {}

    def status(self) -> tuple[Status, str | None]:
        """How the run stands, and for a failed one its error line."""
        status = self.summary().get("status")
        if status:
            return Status(status), None
        last = self.last_event()
        if last.get("event") == Event.preempted:
            return Status.preempted, None
        if last.get("event") == Event.failed:
            return Status.failed, last.get("error")
        return Status.running, None

    # --- stop requests ---
    def request_stop(self, reason: str) -> None:
        self.stop_file.write_text(reason)

    def stop_request(self) -> str | None:
        """The STOP file's text (why the run should stop), or None when there is none."""
        try:
            return self.stop_file.read_text().strip()
        except FileNotFoundError:
            return None

    def clear_stop_request(self) -> None:
        """A stop request belongs to the invocation that made it."""
        self.stop_file.unlink(missing_ok=True)

    # --- identity ---
    def run_id(self, chosen: str | None = None) -> str:
        """One W&B run id per run directory (`chosen`, else a new one), kept across reruns and restarts."""
        recorded = self.recorded_run_id()
        if recorded:
            return recorded
        run_id = chosen or uuid.uuid4().hex[:12]
        self.record.write_text(json.dumps({"run_id": run_id}))
        return run_id

    def recorded_run_id(self) -> str | None:
        return _json(self.record).get("run_id")


@dataclass(frozen=True)
class SweepDir:
    """A sweep's folder: the command line that started it, one run directory per trial, and once it has
    ended its record and the best trial's config.

        <sweep_dir>/request.json    the sweep's overrides and config file (what --resume reruns)
        <sweep_dir>/trials/<id>/    each trial's run directory
        <sweep_dir>/sweep.json      every trial's outcome, written when the sweep ends
        <sweep_dir>/best.yaml       the best completed trial's config, ready to retrain
    """

    path: Path

    @property
    def request(self) -> Path:
        return self.path / "request.json"

    @property
    def record(self) -> Path:
        return self.path / "sweep.json"

    @property
    def best(self) -> Path:
        return self.path / "best.yaml"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    def trial(self, trial_id: str) -> RunDir:
        return RunDir(self.trials / trial_id)

    def trial_dirs(self) -> list[Path]:
        return sorted(self.trials.iterdir()) if self.trials.is_dir() else []

    def is_sweep(self) -> bool:
        return self.record.is_file() or (self.request.is_file() and self.trials.is_dir())

    def read_request(self) -> dict:
        return _json(self.request)

    def read_record(self) -> dict:
        return _json(self.record)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:  # a full disk: the old file stays whole, and no partial copy is left beside it
        tmp.unlink(missing_ok=True)
        raise
