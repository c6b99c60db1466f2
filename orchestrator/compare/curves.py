"""`--png`: train loss and the --metric the runs are sorted by (val loss by default) against step (or tokens),
one colour per run, in the table's order.

The legend names each run and its values of the differing keys, so a person can tell the runs
apart without the table. matplotlib's object API (no pyplot): no global figure state, no display.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.compare.comparison import Comparison
from orchestrator.compare.runs import Run
from orchestrator.compare.table import value_text

LEGEND_KEYS = 4
"""Differing keys named per legend entry; more would bury the curves (the table has them all)."""


def label(run: Run, comparison: Comparison) -> str:
    keys = comparison.differing_keys
    values = [f"{key}={value_text(run.value(key))}" for key in keys[:LEGEND_KEYS]]
    more = [f"+{len(keys) - LEGEND_KEYS} keys"] if len(keys) > LEGEND_KEYS else []
    return " ".join([run.name, *values, *more])


def curve_title(column: str) -> str:
    """A curve's title: val_loss -> val loss, val_accuracy -> val accuracy."""
    return column.replace("_", " ")


def figure(comparison: Comparison, x: str = "step"):
    """A matplotlib Figure: train loss (left) and `comparison.curve` (right: val loss, or the metric the runs
    are sorted by); the same colour is the same run."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.5 + 0.22 * len(comparison.runs)), layout="constrained")
    train_ax, metric_ax = fig.subplots(1, 2)
    palette = colormaps["tab10" if len(comparison.runs) <= 10 else "tab20"]
    column = comparison.curve
    for i, run in enumerate(comparison.runs):
        colour = palette(i % palette.N)
        name = label(run, comparison)
        logged = [row for row in run.history if isinstance(row.get("loss"), float) and x in row]
        evaluated = [row for row in run.history if isinstance(row.get(column), float) and x in row]
        train_ax.plot([row[x] for row in logged], [row["loss"] for row in logged], color=colour, label=name,
                      linewidth=1.4)
        metric_ax.plot([row[x] for row in evaluated], [row[column] for row in evaluated], color=colour, label=name,
                    marker="o", markersize=3.5, linewidth=1.4)
    for ax, heading in ((train_ax, "train loss"), (metric_ax, curve_title(column))):
        ax.set_title(heading)
        ax.set_xlabel(x)
        ax.set_ylabel(heading)
        ax.grid(alpha=0.3)
    fig.legend(*train_ax.get_legend_handles_labels(), loc="outside lower center", ncols=2 if len(comparison.runs) > 6
               else 1, fontsize="small", frameon=False)
    return fig


def write_png(comparison: Comparison, path: Path, x: str = "step") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(comparison, x).savefig(path, dpi=110)
