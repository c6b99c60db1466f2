"""`orchestrator compare PATH... [--metric M] [--mode min|max] [--format table|json|csv] [--png [FILE]]
[--x step|tokens] [--html FILE] [--wandb-report]`: runs and sweeps side by side, from their folders.

Every input is checked before anything is written (exit 2, one line per problem); then the table
(or JSON/CSV) goes to stdout and the files asked for are written. Only what an output needs is
imported: matplotlib for --png, plotly and Optuna for --html, wandb-workspaces for --wandb-report.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from orchestrator.compare import runs as run_files
from orchestrator.compare.comparison import MODES, compare, to_csv, to_json
from orchestrator.errors import ConfigError
from orchestrator.paths import unwritable

FORMATS = ("table", "json", "csv")
X_AXES = ("step", "tokens")
DEFAULT_PNG = "compare.png"
_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")


@dataclasses.dataclass(frozen=True)
class Request:
    """The command line, as typed options (the CLI's argparse fills it)."""

    paths: list[str]
    metric: str | None = None  # None: what the sweep compared ranked by, else val_loss
    mode: str | None = None  # None: the sweep's, else max for an accuracy, F1 or margin, min for the rest
    format: str = "table"
    png: str | None = None  # "" = --png without a file: the default place
    x: str = "step"
    html: str | None = None
    wandb_report: bool = False


def run(request: Request) -> int:
    problems = _problems(request)
    if problems:
        raise ConfigError(problems)
    runs, sweeps = run_files.load(request.paths)
    request = _with_defaults(request, sweeps)
    comparison = compare(runs, sweeps, request.metric, request.mode)
    logged = _logged_keys(runs)
    if logged and request.metric not in logged:  # runs that logged nothing yet (failed at start) are still shown
        raise ConfigError([f"--metric {request.metric}: no run logged it; metrics.jsonl has {', '.join(logged)}"])
    png = _png_path(request, bool(sweeps))
    outputs = [("--png", png), ("--html", Path(request.html) if request.html else None)]
    problems = [problem for flag, path in outputs if path is not None
                if (problem := unwritable(flag, str(path.expanduser().resolve().parent)))]
    if request.wandb_report:
        from orchestrator.compare.wandb_report import offline_reason

        if reason := offline_reason(runs):
            problems.append(f"--wandb-report: {reason}")
    if problems:
        raise ConfigError(problems)

    if request.format == "json":
        print(to_json(comparison))
    elif request.format == "csv":
        print(to_csv(comparison), end="")
    else:
        from orchestrator.compare.table import print_table

        print_table(comparison)
    written = sys.stderr if request.format != "table" else sys.stdout  # keep a script's stdout pure JSON/CSV
    if png is not None:
        from orchestrator.compare.curves import write_png

        write_png(comparison, png, request.x)
        print(f"curves: {png}", file=written)
    if request.html:
        from orchestrator.compare.html import write_html

        write_html(comparison, Path(request.html), request.x)
        print(f"report: {request.html}", file=written)
    if request.wandb_report:
        from orchestrator.compare.wandb_report import publish

        print(f"W&B report: {publish(comparison, request.x)}", file=written)
    return 0


def _with_defaults(request: Request, sweeps: list) -> Request:
    """The metric and mode a sweep ranked its trials by, when comparing one sweep (or several that agree) and
    none was given; else val_loss. Without --mode: max for an accuracy, an F1 or a reward margin, min for losses
    and perplexity."""
    ranked_by = {(sweep.metric, sweep.mode) for sweep in sweeps}
    metric, mode = next(iter(ranked_by)) if len(ranked_by) == 1 else ("val_loss", "min")
    if request.metric is not None:
        metric, mode = request.metric, "max" if request.metric.endswith(("accuracy", "_f1", "margin")) else "min"
    return dataclasses.replace(request, metric=metric, mode=request.mode or mode)


def _problems(request: Request) -> list[str]:
    problems = []
    if request.mode is not None and request.mode not in MODES:
        problems.append(f"--mode {request.mode}: must be one of {', '.join(MODES)}")
    if request.format not in FORMATS:
        problems.append(f"--format {request.format}: must be one of {', '.join(FORMATS)}")
    if request.x not in X_AXES:
        problems.append(f"--x {request.x}: must be one of {', '.join(X_AXES)}")
    if request.metric is not None and not _METRIC.match(request.metric):
        problems.append(f"--metric {request.metric}: a column of metrics.jsonl, e.g. val_loss, val_accuracy or loss")
    if request.png and not request.png.endswith(".png"):
        problems.append(f"--png {request.png}: the file must end in .png (or put --png, with no file, after "
                        "the run directories)")
    if request.html is not None and not request.html.endswith((".html", ".htm")):
        problems.append(f"--html {request.html}: the file must end in .html")
    return problems


def _png_path(request: Request, has_sweep: bool) -> Path | None:
    """--png FILE; --png alone: <the sweep>/compare.png when the first input is a sweep, else ./compare.png."""
    if request.png is None:
        return None
    if request.png:
        return Path(request.png).expanduser()
    first = Path(request.paths[0]).expanduser()
    return first / DEFAULT_PNG if has_sweep and run_files.is_sweep(first.resolve()) else Path(DEFAULT_PNG)


def _logged_keys(runs: list[run_files.Run]) -> list[str]:
    keys: dict[str, None] = {}
    for run in runs:
        for row in run.history:
            keys.update(dict.fromkeys(k for k, v in row.items() if isinstance(v, float) and k != "step"))
    return list(keys)
