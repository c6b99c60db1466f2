"""The terminal table (rich): one row per run, best first, then only the config keys that differ;
under it, for each sweep, the best trial as a command and the trials ASHA stopped, and where each
run's W&B run is.

The formatting helpers here are shared with the HTML report, so both show the same text.
"""

from __future__ import annotations

import math
import shutil
import sys
from typing import Any, TextIO

from orchestrator.compare.comparison import Comparison, asha_stops, best_trial, retrain_command, wandb_pointer
from orchestrator.compare.runs import DISTILLATION, Run

HEADERS = ("run", "status", "steps", "train loss", "best val loss (step)", "val ppl", "tok/s", "peak mem/rank",
           "wall")


def cells(run: Run, comparison: Comparison) -> list[str]:
    """The row's text, column by column: HEADERS, the final value of each other validation metric (a
    classifier's accuracy and F1), `best <metric>` when sorting by another metric than val_loss, then the
    differing keys."""
    values = [run.name, status_text(run), str(run.steps), num(run.final_train_loss),
              "-" if run.best_val_loss is None else f"{num(run.best_val_loss)} ({run.best_val_step})",
              num(run.final_val_ppl, 2), num(run.tokens_per_s, 0, thousands=True),
              memory(run.peak_memory_bytes_per_rank), duration(run.wall_s)]
    values += [num(run.final_val_metrics.get(name)) for name in comparison.other_val_metrics]
    if comparison.shows_trainable:
        values.append("all" if run.trainable_params is None else f"{run.trainable_params:,}")
    if comparison.shows_distillation:
        values += [num(run.distillation.get(key)) for key in DISTILLATION]
    if comparison.metric != "val_loss":
        best, step = run.best(comparison.metric, comparison.maximize)
        values.append("-" if best is None else f"{num(best)} ({step})")
    return values + [value_text(run.value(key)) for key in comparison.differing_keys]


def headers(comparison: Comparison) -> list[str]:
    extra = [f"best {comparison.metric} (step)"] if comparison.metric != "val_loss" else []
    trainable = ["trainable"] if comparison.shows_trainable else []
    distillation = [key.replace("_", " ") for key in DISTILLATION] if comparison.shows_distillation else []
    return [*HEADERS, *(f"final {name}" for name in comparison.other_val_metrics), *trainable, *distillation,
            *extra, *comparison.differing_keys]


def notes(comparison: Comparison) -> list[str]:
    """The lines under the table: sweeps' best trials and early stops, compression results, W&B runs."""
    lines = []
    for sweep in comparison.sweeps:
        state = "" if sweep.ended else ", still running"
        lines.append(f"sweep {sweep.name} ({sweep.sweep_dir}): {len(sweep.trials)} trials{state}; searched "
                     f"{', '.join(sweep.searched) or 'nothing'}")
        best = best_trial(sweep, comparison.metric, comparison.maximize)
        if best is not None:
            value, step = best.final(comparison.metric)
            lines.append(f"  best trial {best.name} (final {comparison.metric} {num(value)} at step {step}): "
                         f"{retrain_command(sweep, best)}")
        if sweep.trials and sweep.trials[0].config.get("sweep.scheduler") == "asha":
            stops = asha_stops(sweep)
            lines.append("  ASHA stopped " + (", ".join(f"{name} at step {step}" for name, step in stops)
                                              if stops else "no trial") + ("" if sweep.ended else " so far"))
    lines += [f"{run.name} failed: {run.error}" for run in comparison.runs if run.status == "failed" and run.error]
    for run in comparison.runs:
        for report in run.compression:
            lines.append(f"compressed {run.name} ({report.get('pipeline')}): "
                         f"sparsity {num(report.get('sparsity'), 3)}, "
                         f"ppl {num(report.get('ppl_before'), 2)} -> {num(report.get('ppl_after'), 2)}, file "
                         f"{size(report.get('file_bytes_before'))} -> {size(report.get('file_bytes_after'))}")
    pointers = [(run.name, wandb_pointer(run)) for run in comparison.runs]
    if any(pointer for _, pointer in pointers):
        lines.append("W&B:")
        lines += [f"  {name}: {pointer}" for name, pointer in pointers if pointer]
    return lines


def print_table(comparison: Comparison, out: TextIO | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(comparison.runs)} runs by {comparison.metric} ({comparison.mode})",
                  title_justify="left")
    columns = headers(comparison)
    first_key = len(columns) - len(comparison.differing_keys)
    for i, header in enumerate(columns):  # numbers to the right; names, status and config values to the left
        table.add_column(header, justify="left" if i < 2 or i >= first_key else "right",
                         style="cyan" if i >= first_key else None)
    for run in comparison.runs:
        table.add_row(*cells(run, comparison))
    out = out or sys.stdout
    # A pipe gets the whole table too, not one squeezed to 80 columns.
    width = shutil.get_terminal_size((240, 24)).columns if out.isatty() else 240
    console = Console(file=out, width=width, highlight=False)
    console.print(table)
    for line in notes(comparison):
        console.print(line, soft_wrap=True, markup=False)


def status_text(run: Run) -> str:
    if run.status == "early_stopped":
        return f"early-stopped at {run.steps}"
    if run.status == "failed" and run.error:
        return "failed (see below)"
    if run.status in ("running", "preempted"):
        return f"{run.status} (step {run.steps})"
    return run.status


def num(value: float | None, digits: int = 4, thousands: bool = False) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"


def value_text(value: Any) -> str:
    """A config value as the user would type it: 0.001 -> 0.001, 3e-05 -> 3e-05, None -> null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def memory(per_rank: list[int] | None) -> str:
    """The largest rank's peak (the one that decides whether a job fits), and how many ranks there were."""
    if not per_rank:
        return "-"
    return f"{size(max(per_rank))}" + (f" (max of {len(per_rank)})" if len(per_rank) > 1 else "")


def size(n: float | None) -> str:
    if n is None:
        return "-"
    units, i = ("B", "KiB", "MiB", "GiB"), 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
