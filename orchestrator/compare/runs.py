"""Loading what `compare` compares: run directories and sweep directories, as they are on disk.

A run directory is the source of truth (config.yaml, metrics.jsonl, summary.json, events.jsonl,
run.json); a sweep directory adds its trials (trials/<id>/, each a run directory) and, once the
sweep has ended, sweep.json (which also knows trials that failed before writing a run directory).
Runs still training have no summary yet: they are read from metrics.jsonl as far as it goes.
Nothing here draws or prints; a path that is neither a run nor a sweep is a ConfigError (exit 2).
"""

from __future__ import annotations

import glob
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ConfigError
from orchestrator.rundir import RunDir, SweepDir

IDENTITY_KEYS = ("run_dir", "logger.run_id", "sweep.dir", "sweep.trial_id", "sweep.trial_overrides")
"""Config keys that name a run rather than describe its training: different in every run, never a difference."""


@dataclass
class Run:
    """One run's numbers, each exactly as its run directory records it (None when it does not)."""

    name: str
    run_dir: Path
    status: str  # completed, early_stopped (by a sweep's scheduler), failed, running or preempted
    steps: int  # the last step logged: a running run's current step
    final_train_loss: float | None
    final_val_loss: float | None
    final_val_ppl: float | None
    best_val_loss: float | None
    best_val_step: int | None
    tokens_per_s: float | None  # median of the logged windows (each line of metrics.jsonl covers one)
    peak_memory_bytes_per_rank: list[int] | None
    wall_s: float | None
    config: dict[str, Any]  # flattened: "optim.lr" -> 0.001
    history: list[dict] = field(repr=False)  # metrics.jsonl's rows
    overrides: dict[str, str] = field(default_factory=dict)  # a sweep trial's searched values
    error: str | None = None  # a failed run's one-line root cause
    sweep: str | None = None  # the sweep directory a trial belongs to
    compression: list[dict] = field(default_factory=list)  # compress_report.json files it holds
    final_val_metrics: dict[str, float] = field(default_factory=dict)  # val_loss, val_ppl... of the last evaluation
    trainable_params: int | None = None  # with adapters (peft=lora, dora): the parameters that trained
    distillation: dict[str, float] = field(default_factory=dict)  # task=distill: DISTILLATION's figures

    def value(self, key: str) -> Any:
        """A config key's value; for a swept config group (zero=3), the option the trial picked."""
        return self.config[key] if key in self.config else self.overrides.get(key)

    def best(self, metric: str, maximize: bool) -> tuple[float | None, int | None]:
        """(best value, its step) of a metrics.jsonl column."""
        scored = [(row[metric], row["step"]) for row in self.history if _number(row.get(metric))]
        return (max if maximize else min)(scored, key=lambda pair: pair[0], default=(None, None))

    def final(self, metric: str) -> tuple[float | None, int | None]:
        """(last logged value, its step) of a metrics.jsonl column."""
        scored = [(row[metric], row["step"]) for row in self.history if _number(row.get(metric))]
        return scored[-1] if scored else (None, None)

    @property
    def wandb_run_id(self) -> str | None:
        return RunDir(self.run_dir).recorded_run_id()


@dataclass
class Sweep:
    """A sweep directory: its trials' runs, what it searched, and what its record says."""

    sweep_dir: Path
    name: str
    metric: str  # what the sweep itself ranked its trials by (`compare --metric` may differ)
    mode: str
    searched: list[str]  # the keys the search varied, in the order it listed them
    trials: list[Run]
    base_overrides: list[str]  # the command line every trial shares (no search expressions)
    config_file: str | None
    ended: bool  # sweep.json written: the sweep has finished


def load(paths: list[str]) -> tuple[list[Run], list[Sweep]]:
    """Every run the inputs name (sweeps expanded to their trials), in input order; ConfigError for
    inputs that are not runs or sweeps, all of them in one error."""
    runs: list[Run] = []
    sweeps: list[Sweep] = []
    problems: list[str] = []
    for given in paths:
        matches = [given] if Path(given).expanduser().exists() else sorted(glob.glob(str(Path(given).expanduser())))
        if not matches:
            problems.append(f"{given}: no such file or directory")
        for match in matches:
            path = Path(match).expanduser().resolve()
            if is_sweep(path):
                sweeps.append(load_sweep(path))
                runs += sweeps[-1].trials
            elif is_run(path):
                runs.append(load_run(path))
            else:
                problems.append(f"{match}: not a run directory (no config.yaml with run.json or metrics.jsonl) "
                                f"or sweep directory (no sweep.json or trials/)")
    if problems:
        raise ConfigError(problems)
    if not runs:
        raise ConfigError([f"{' '.join(paths)}: no runs to compare (the sweep has no trials yet)"])
    _unique_names(runs)
    return runs, sweeps


def is_run(path: Path) -> bool:
    return RunDir(path).is_run()


def is_sweep(path: Path) -> bool:
    return SweepDir(path).is_sweep()


def load_run(run_dir: Path, sweep_entry: dict | None = None) -> Run:
    """A run directory; `sweep_entry` is its trial's entry in sweep.json, when there is one."""
    run = RunDir(run_dir)
    history = run.rows()
    summary = run.summary()
    raw = yaml.safe_load(run.config.read_text()) or {}
    config = flatten(raw)
    logged = [row for row in history if _number(row.get("loss"))]
    evaluated = [row for row in history if _number(row.get("val_loss"))]
    best = min(evaluated, key=lambda row: row["val_loss"], default=None)
    last_evaluated = evaluated[-1] if evaluated else {}
    final_val = (final_val_metrics(summary)  # a run not ended yet: its last evaluated row
                 or {key: value for key, value in last_evaluated.items() if key.startswith("val_")})
    windows = [row["tokens_per_s"] for row in logged if _number(row.get("tokens_per_s"))]
    status, error = _status(run, summary, sweep_entry)
    return Run(
        name=run_dir.name,
        run_dir=run_dir,
        status=status,
        steps=summary.get("steps", history[-1]["step"] if history else 0),
        final_train_loss=summary.get("final_train_loss", logged[-1]["loss"] if logged else None),
        final_val_loss=final_val.get("val_loss"),
        final_val_ppl=final_val.get("val_ppl"),
        best_val_loss=best["val_loss"] if best else None,
        best_val_step=best["step"] if best else None,
        tokens_per_s=statistics.median(windows) if windows else None,
        peak_memory_bytes_per_rank=summary.get("peak_memory_bytes_per_rank"),
        wall_s=summary.get("wall_s", logged[-1].get("elapsed_s") if logged else None),
        config=config,
        history=history,
        overrides=dict((raw.get("sweep") or {}).get("trial_overrides") or {}),
        error=error,
        compression=run.compress_reports(),
        trainable_params=summary.get("trainable_params"),
        final_val_metrics=final_val,
        distillation={key: summary[key] for key in DISTILLATION if key in summary},
    )


DISTILLATION = ("distill_loss", "data_loss", "teacher_val_loss")
"""A distillation's last logged losses (tasks/distill.py) and its teacher's validation loss."""


def final_val_metrics(summary: dict) -> dict[str, float]:
    """summary.json's `final_val_*`: every validation metric of the run's last evaluation, by the name its
    evaluations log (val_loss, val_ppl; a classifier's val_accuracy, val_macro_f1)."""
    return {key.removeprefix("final_"): value for key, value in summary.items() if key.startswith("final_val_")}


def load_sweep(sweep_dir: Path) -> Sweep:
    """A sweep directory: sweep.json when the sweep has ended, else its trials' run directories so far."""
    from orchestrator.config.overrides import split_overrides

    folder = SweepDir(sweep_dir)
    record = folder.read_record()
    request = folder.read_request()
    entries = {t["id"]: t for t in record.get("trials", [])}
    trial_dirs = [path for path in folder.trial_dirs() if is_run(path)]
    trials = [load_run(path, entries.get(path.name)) for path in trial_dirs]
    trials += [_failed_before_running(sweep_dir, entry) for trial_id, entry in entries.items()
               if trial_id not in {p.name for p in trial_dirs}]
    for trial in trials:
        trial.sweep = str(sweep_dir)
    searched: list[str] = []
    for overrides in [*(t.get("overrides", {}) for t in entries.values()),
                      *(t.overrides for t in trials)]:
        searched += [key for key in overrides if key not in searched]
    base_overrides = split_overrides(request.get("overrides", []))[0]
    first = trials[0].config if trials else {}
    return Sweep(
        sweep_dir=sweep_dir,
        name=record.get("name", first.get("sweep.name", sweep_dir.name)),
        metric=record.get("metric", first.get("sweep.metric", "val_loss")),
        mode=record.get("mode", first.get("sweep.mode", "min")),
        searched=searched,
        trials=trials,
        base_overrides=base_overrides,
        config_file=request.get("config_file"),
        ended=bool(record),
    )


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists and other leaves stay whole."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" not in IDENTITY_KEYS:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _status(run: RunDir, summary: dict, sweep_entry: dict | None) -> tuple[str, str | None]:
    """The run's status (RunDir.status) and, for a failed one, its error line; a trial the sweep's record
    says failed, and that wrote no summary, failed with the record's error."""
    if not summary.get("status") and sweep_entry and sweep_entry.get("status") == "failed":
        return "failed", sweep_entry.get("error")
    status, error = run.status()
    return status.value, error


def _failed_before_running(sweep_dir: Path, entry: dict) -> Run:
    """A trial sweep.json records as failed before it wrote a run directory (its values made a bad config)."""
    overrides = entry.get("overrides", {})
    return Run(name=entry["id"], run_dir=Path(entry.get("run_dir") or SweepDir(sweep_dir).trial(entry["id"]).path),
               status="failed", steps=entry.get("steps") or 0, final_train_loss=None, final_val_loss=None,
               final_val_ppl=None, best_val_loss=None, best_val_step=None, tokens_per_s=None,
               peak_memory_bytes_per_rank=None, wall_s=entry.get("wall_s"),
               config={}, history=[], overrides=dict(overrides), error=entry.get("error"))


def _unique_names(runs: list[Run]) -> None:
    """Runs from different folders may share a folder name (runs/a, other/a): name those by their path."""
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.run_dir)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
