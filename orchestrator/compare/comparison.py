"""The comparison itself, before any rendering: the order of the runs, the config keys that differ,
a sweep's best trial as a command, and the rows `--format json|csv` prints.

Every renderer (table, curves, HTML, W&B report) works from one Comparison, so they agree on the
order, the keys and the numbers. Numbers are passed through untouched from runs.py, so the JSON
output round-trips each run's summary.json exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from dataclasses import dataclass
from typing import Any

from orchestrator.compare.runs import DISTILLATION, IDENTITY_KEYS, Run, Sweep
from orchestrator.config.overrides import as_override

MODES = ("min", "max")


@dataclass
class Comparison:
    runs: list[Run]  # sorted by the metric, best first; runs without it last
    sweeps: list[Sweep]
    metric: str
    mode: str
    differing_keys: list[str]  # searched keys first, then every other key whose values differ
    other_val_metrics: list[str]  # beyond val loss and ppl: a classifier's val_accuracy, val_macro_f1

    @property
    def shows_trainable(self) -> bool:
        """A `trainable` column, when some run trained adapters (the others trained every parameter)."""
        return any(run.trainable_params is not None for run in self.runs)

    @property
    def shows_distillation(self) -> bool:
        """Distillation's columns (runs.DISTILLATION), when some run distilled."""
        return any(run.distillation for run in self.runs)

    @property
    def maximize(self) -> bool:
        return self.mode == "max"

    @property
    def curve(self) -> str:
        """The metrics.jsonl column plotted beside the train loss: the metric the runs are sorted by (a
        classifier's val_accuracy), or val_loss when that is the train loss itself."""
        return "val_loss" if self.metric == "loss" else self.metric


def compare(runs: list[Run], sweeps: list[Sweep], metric: str, mode: str) -> Comparison:
    maximize = mode == "max"

    def order(run: Run) -> tuple:
        value, _ = run.best(metric, maximize)
        return (value is None, 0.0 if value is None else (-value if maximize else value))

    return Comparison(runs=sorted(runs, key=order), sweeps=sweeps, metric=metric, mode=mode,
                      differing_keys=differing_keys(runs, [key for s in sweeps for key in s.searched]),
                      other_val_metrics=other_val_metrics(runs))


def other_val_metrics(runs: list[Run]) -> list[str]:
    """The validation metrics any run reports beyond val loss and perplexity (which have columns of their own),
    in the order first seen: a classifier's val_accuracy and val_macro_f1. Each gets a column of final values;
    language-model runs report none, so their table stays as it was."""
    names = dict.fromkeys(name for run in runs for name in run.final_val_metrics)
    return [name for name in names if name not in ("val_loss", "val_ppl")]


def differing_keys(runs: list[Run], searched: list[str]) -> list[str]:
    """The searched keys (in the sweep's order), then the other config keys whose values are not all
    equal, in config order. Keys that only name a run (run_dir, W&B run id, trial id) never count."""
    keys = list(dict.fromkeys(searched))
    described = [run for run in runs if run.config]  # a trial that failed before its run directory has none
    for run in described:
        for key in run.config:
            if key in keys or _identity(key):
                continue
            if len({_hashable(other.config.get(key)) for other in described}) > 1:
                keys.append(key)
    return keys


def _identity(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IDENTITY_KEYS)


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def best_trial(sweep: Sweep, metric: str, maximize: bool) -> Run | None:
    """The sweep's best trial: among those that ran to the end (an early-stopped one never beat them on equal
    terms), the best final metric, the model a retrain reproduces. best.yaml names the same one
    (sweep/record.best_completed)."""
    done = [t for t in sweep.trials if t.status == "completed" and t.final(metric)[0] is not None]
    return (max if maximize else min)(done, key=lambda t: t.final(metric)[0], default=None)


def retrain_command(sweep: Sweep, trial: Run) -> str:
    """`orchestrator train ...`: the sweep's shared command line plus the trial's values, copy-paste ready."""
    overrides = [*sweep.base_overrides, *(as_override(key, value) for key, value in trial.overrides.items())]
    last: dict[str, str] = {}  # a key given twice counts once, as Hydra reads it: the last value
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not key.startswith("sweep"):
            last.pop(key, None)
            last[key] = override
    words = ["orchestrator", "train", *(["--config", sweep.config_file] if sweep.config_file else []),
             *last.values(), f"run_dir={sweep.sweep_dir / 'best-retrain'}"]
    return shlex.join(words)


def asha_stops(sweep: Sweep) -> list[tuple[str, int]]:
    """(trial, step) for each trial the sweep's scheduler stopped early."""
    return [(t.name, t.steps) for t in sweep.trials if t.status == "early_stopped"]


def wandb_pointer(run: Run) -> str | None:
    """Where the run's W&B run is: its URL when it was tracked online, the sync command when offline."""
    mode, run_id = run.config.get("logger.mode"), run.wandb_run_id
    if mode == "disabled" or run_id is None:
        return None
    if mode == "online":
        entity = run.config.get("logger.entity")
        project = run.config.get("logger.project")
        return f"https://wandb.ai/{entity}/{project}/runs/{run_id}" if entity else f"{project}/runs/{run_id}"
    if not any((run.run_dir / "wandb").glob(f"offline-run-*-{run_id}")):
        return None  # it failed before W&B started
    return f"wandb sync {shlex.quote(str(run.run_dir / 'wandb'))}/offline-run-*-{run_id}"


def row(run: Run, comparison: Comparison) -> dict:
    """One run as `--format json` prints it: the numbers as recorded, and only the differing config keys."""
    best, best_step = run.best(comparison.metric, comparison.maximize)
    return {
        "name": run.name,
        "run_dir": str(run.run_dir),
        "status": run.status,
        "steps": run.steps,
        "final_train_loss": _finite(run.final_train_loss),
        "best_val_loss": _finite(run.best_val_loss),
        "best_val_step": run.best_val_step,
        "final_val_loss": _finite(run.final_val_loss),
        "final_val_ppl": _finite(run.final_val_ppl),
        **{f"final_{name}": _finite(run.final_val_metrics.get(name)) for name in comparison.other_val_metrics},
        "metric": comparison.metric,
        "best_metric": _finite(best),
        "best_metric_step": best_step,
        "tokens_per_s": _finite(run.tokens_per_s),
        "peak_memory_bytes_per_rank": run.peak_memory_bytes_per_rank,
        "wall_s": _finite(run.wall_s),
        "trainable_params": run.trainable_params,
        **({key: _finite(run.distillation.get(key)) for key in DISTILLATION} if comparison.shows_distillation
           else {}),
        "error": run.error,
        "sweep": run.sweep,
        "wandb": wandb_pointer(run),
        "compression": run.compression,
        "config": {key: run.value(key) for key in comparison.differing_keys},
    }


def to_json(comparison: Comparison) -> str:
    sweeps = []
    for sweep in comparison.sweeps:
        best = best_trial(sweep, comparison.metric, comparison.maximize)
        sweeps.append({"sweep_dir": str(sweep.sweep_dir), "name": sweep.name, "metric": sweep.metric,
                       "mode": sweep.mode, "searched_keys": sweep.searched,
                       "ended": sweep.ended, "best_trial": best.name if best else None,
                       "best_command": retrain_command(sweep, best) if best else None,
                       "asha_stops": [{"trial": name, "step": step} for name, step in asha_stops(sweep)]})
    return json.dumps({"metric": comparison.metric, "mode": comparison.mode,
                       "differing_keys": comparison.differing_keys,
                       "runs": [row(run, comparison) for run in comparison.runs], "sweeps": sweeps},
                      indent=2, allow_nan=False)


CSV_COLUMNS = ("name", "run_dir", "status", "steps", "final_train_loss", "best_val_loss", "best_val_step",
               "final_val_ppl", "tokens_per_s", "wall_s", "wandb")


def to_csv(comparison: Comparison) -> str:
    """One line per run: the table's numbers (the final value of each other validation metric among them),
    then one column per differing config key."""
    columns = [*CSV_COLUMNS, *(f"final_{name}" for name in comparison.other_val_metrics),
               *(["trainable_params"] if comparison.shows_trainable else []),
               *(DISTILLATION if comparison.shows_distillation else ())]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "peak_memory_bytes_per_rank", *comparison.differing_keys])
    for run in comparison.runs:
        values = row(run, comparison)
        peak = values["peak_memory_bytes_per_rank"]
        writer.writerow([_cell(values[c]) for c in columns] + [" ".join(map(str, peak)) if peak else ""]
                        + [_cell(v) for v in values["config"].values()])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)  # repr: the exact float, as in the JSON


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a diverged loss is reported as null (the table shows 'nan')."""
    return value if value is not None and math.isfinite(value) else None

