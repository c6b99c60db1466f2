"""`--html`: one self-contained file, the comparison for people who cannot run the CLI.

The table and its notes (as the terminal shows them), interactive curves of the train loss and of
the --metric (val loss by default, as --png draws them), and for each sweep a parallel-coordinates
plot of the searched keys against the metric and Optuna's parameter importance. plotly.js and
every number are embedded inline, so the file opens anywhere, offline, with no request leaving
the page (a test opens it in headless Chromium to hold that).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from orchestrator.compare.comparison import Comparison
from orchestrator.compare.curves import curve_title, label
from orchestrator.compare.importance import importance
from orchestrator.compare.runs import Sweep
from orchestrator.compare.table import cells, headers, notes, value_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
td.key, th.key { background: #eef6ff; text-align: left; }
pre { background: #f7f7f7; padding: 0.5rem; white-space: pre-wrap; font-size: 0.8rem; }
.note { color: #8a5300; }
"""


def write_html(comparison: Comparison, path: Path, x: str = "step") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(comparison, x))


def render(comparison: Comparison, x: str = "step") -> str:
    sections = [f"<h1>{len(comparison.runs)} runs by {html.escape(comparison.metric)} ({comparison.mode})</h1>",
                _table(comparison), f"<pre>{html.escape(chr(10).join(notes(comparison)))}</pre>",
                "<h2>Curves</h2>", _plot(_curves(comparison, x), "curves", include_js=True)]
    for i, sweep in enumerate(comparison.sweeps):
        sections.append(f"<h2>Sweep {html.escape(sweep.name)}: {html.escape(str(sweep.sweep_dir))}</h2>")
        sections.append(_sweep_sections(sweep, comparison, i))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>orchestrator compare</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")


def _table(comparison: Comparison) -> str:
    first_key = len(headers(comparison)) - len(comparison.differing_keys)
    head = "".join(f"<th{' class=key' if i >= first_key else ''}>{html.escape(h)}</th>"
                   for i, h in enumerate(headers(comparison)))
    rows = ["<tr>" + "".join(f"<td{' class=key' if i >= first_key else ''}>{html.escape(c)}</td>"
                             for i, c in enumerate(cells(run, comparison))) + "</tr>" for run in comparison.runs]
    return f"<table id=\"runs\"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _curves(comparison: Comparison, x: str):
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    column = comparison.curve
    headings = ("train loss", curve_title(column))
    fig = make_subplots(rows=1, cols=2, subplot_titles=headings)
    palette = qualitative.Plotly if len(comparison.runs) <= 10 else qualitative.Light24
    for i, run in enumerate(comparison.runs):
        colour, name = palette[i % len(palette)], label(run, comparison)
        logged = [row for row in run.history if isinstance(row.get("loss"), float) and x in row]
        evaluated = [row for row in run.history if isinstance(row.get(column), float) and x in row]
        # One legend entry per run toggles both of its curves.
        fig.add_trace(go.Scatter(x=[r[x] for r in logged], y=[r["loss"] for r in logged], name=name,
                                 legendgroup=run.name, line={"color": colour}, mode="lines"), row=1, col=1)
        fig.add_trace(go.Scatter(x=[r[x] for r in evaluated], y=[r[column] for r in evaluated], name=name,
                                 legendgroup=run.name, showlegend=False, line={"color": colour},
                                 mode="lines+markers"), row=1, col=2)
    fig.update_xaxes(title_text=x)
    for col, heading in enumerate(headings, start=1):
        fig.update_yaxes(title_text=heading, row=1, col=col)
    fig.update_layout(height=480, legend={"orientation": "h", "y": -0.2}, margin={"t": 40})
    return fig


def _sweep_sections(sweep: Sweep, comparison: Comparison, index: int) -> str:
    parts = [_plot(_parallel_coordinates(sweep, comparison), f"parcoords-{index}")]
    result = importance(sweep, comparison.metric, comparison.maximize)
    parts.append(f"<h3>Parameter importance for {html.escape(comparison.metric)} (Optuna PED-ANOVA, "
                 f"{result.trials} completed trials)</h3>")
    if result.caveat:
        parts.append(f"<p class=\"note\">{html.escape(result.caveat)}</p>")
    if result.values:
        import plotly.graph_objects as go

        keys = list(result.values)[::-1]  # most important on top
        fig = go.Figure(go.Bar(x=[result.values[k] for k in keys], y=keys, orientation="h"))
        fig.update_layout(height=120 + 40 * len(keys), xaxis_title="importance", margin={"t": 20})
        parts.append(_plot(fig, f"importance-{index}"))
    return "\n".join(parts)


def _parallel_coordinates(sweep: Sweep, comparison: Comparison):
    """One axis per searched key (log10 for positive keys spanning a decade or more), then the metric."""
    import plotly.graph_objects as go

    trials = [t for t in sweep.trials if t.best(comparison.metric, comparison.maximize)[0] is not None]
    dimensions = []
    for key in sweep.searched:
        values = [t.value(key) for t in trials]
        if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            if min(values) > 0 and max(values) / min(values) >= 10:
                dimensions.append({"label": f"log10 {key}", "values": [math.log10(v) for v in values]})
            else:
                dimensions.append({"label": key, "values": values})
        else:
            options = sorted({value_text(v) for v in values})
            dimensions.append({"label": key, "values": [options.index(value_text(v)) for v in values],
                               "tickvals": list(range(len(options))), "ticktext": options})
    scores = [t.best(comparison.metric, comparison.maximize)[0] for t in trials]
    dimensions.append({"label": f"best {comparison.metric}", "values": scores})
    fig = go.Figure(go.Parcoords(
        dimensions=dimensions,
        line={"color": scores, "colorscale": "Viridis", "reversescale": not comparison.maximize, "showscale": True},
    ))
    fig.update_layout(title=f"searched keys vs best {comparison.metric} ({len(trials)} trials)", height=420)
    return fig


def _plot(fig, div_id: str, include_js: bool = False) -> str:
    """The figure as a <div> and its script; the first one also carries plotly.js itself, inline."""
    return fig.to_html(full_html=False, include_plotlyjs=include_js, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})
