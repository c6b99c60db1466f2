"""The sweep directory's records, built from the trials' own run directories.

sweep.json: the sweep's settings, wall time, concurrency and overhead, and one entry per trial
(id, overrides, status, best and final metric with their steps, steps run, wall seconds, run
directory, W&B run id, error line). best.yaml: the best completed trial's whole config, ready for
`orchestrator train --config best.yaml run_dir=...`. The run directories are the truth (they
survive a killed sweep); Tune's results add only what a run directory cannot know (a trial that
failed before writing one, its wall time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from orchestrator.config.schema import SweepConfig
from orchestrator.rundir import RunDir, SweepDir


def trial_record(run_dir: Path, outcome: dict, metric: str, maximize: bool) -> dict:
    """One trial's entry. `outcome` is what the trial function returned to Tune (status, error, time)."""
    run = RunDir(run_dir)
    rows = run.rows()
    scored = [(row[metric], row["step"]) for row in rows if isinstance(row.get(metric), float)
              and not math.isnan(row[metric])]
    best = (max if maximize else min)(scored, default=(None, None))
    final = scored[-1] if scored else (None, None)
    summary = run.summary()
    config = yaml.safe_load(run.config.read_text()) if run.config.exists() else {}
    status = summary.get("status") if summary.get("status") else "failed"
    return {
        "id": run_dir.name,
        "overrides": (config.get("sweep") or {}).get("trial_overrides") or outcome.get("overrides", {}),
        "status": status,
        "best_metric": best[0],
        "best_step": best[1],
        "final_metric": final[0],
        "final_step": final[1],
        "steps": rows[-1]["step"] if rows else 0,
        "wall_s": run.trial_record_field("wall_s", outcome.get("time_total_s")),
        "run_dir": str(run_dir),
        "wandb_run_id": run.recorded_run_id(),
        "error": (outcome.get("error") or "it ended without a summary (its Ray logs say why)")
        if status == "failed" else None,
    }


def write(sweep_dir: Path, sweep: SweepConfig, trials: list[dict], wall_s: float, concurrency: int) -> dict:
    busy = sum(t["wall_s"] or 0 for t in trials) / concurrency
    record = {
        "name": sweep.name,
        "metric": sweep.metric,
        "mode": sweep.mode.value,
        "algorithm": sweep.algorithm.value,
        "scheduler": sweep.scheduler.value,
        "wall_s": wall_s,
        "concurrency": concurrency,
        "overhead": wall_s / busy if busy else None,
        "trials": sorted(trials, key=lambda t: t["id"]),
    }
    _write_atomically(SweepDir(sweep_dir).record, json.dumps(record, indent=2))
    best = best_completed(trials, maximize=sweep.mode.value == "max")
    if best is not None:
        config = yaml.safe_load(RunDir(Path(best["run_dir"])).config.read_text())
        config["run_dir"] = None  # a retrain gets its own folder and its own W&B run
        config["logger"].update(run_id=None, job_type=None)
        _write_atomically(SweepDir(sweep_dir).best, f"# best completed trial {best['id']}: {sweep.metric}="
                                                 f"{best['final_metric']}\n" + yaml.safe_dump(config, sort_keys=False))
    return record


def best_completed(trials: list[dict], maximize: bool) -> dict | None:
    done = [t for t in trials if t["status"] == "completed" and t["final_metric"] is not None]
    return (max if maximize else min)(done, key=lambda t: t["final_metric"], default=None)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
