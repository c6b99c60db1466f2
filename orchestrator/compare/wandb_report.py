"""`--wandb-report`: the same comparison as a W&B report, built with W&B's own report API
(wandb-workspaces) and saved on the W&B server.

The report holds one panel grid over the compared runs (a sweep's group, else the runs by id):
line plots of the train loss and of the --metric (val loss by default), a
parallel-coordinates panel of the differing config keys against the metric, W&B's
parameter-importance panel, and a run comparer showing only the differences.
It needs the runs on the server: runs tracked offline must be synced first (`wandb sync`), and
that is checked before anything is sent.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.compare.comparison import Comparison, wandb_pointer
from orchestrator.compare.curves import curve_title
from orchestrator.compare.runs import Run


def offline_reason(runs: list[Run]) -> str | None:
    """Why no report can be made from here, in a sentence; None when W&B is reachable in principle."""
    untracked = [run.name for run in runs if wandb_pointer(run) is None]
    if untracked:
        return (f"{', '.join(untracked)} kept no W&B run (logger.mode=disabled, or it failed before W&B started); "
                "compare them without --wandb-report")
    unsynced = [run for run in runs if run.config.get("logger.mode") == "offline" and not _synced(run.run_dir)]
    if unsynced:
        commands = "; ".join(str(wandb_pointer(run)) for run in unsynced)
        return (f"{len(unsynced)} run(s) were tracked offline and are not on the W&B server yet; sync them "
                f"first ({commands}), then rerun")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}: a report is written to the W&B server; unset it"
    import wandb

    if not wandb.login(prompt=False, verify=False):
        return "not logged in to W&B: set WANDB_API_KEY or run `wandb login`"
    return None


def _synced(run_dir: Path) -> bool:
    """`wandb sync` leaves a .wandb.synced file next to every transaction log it uploaded."""
    logs = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    return bool(logs) and all(log.with_suffix(".wandb.synced").exists() for log in logs)


def build(comparison: Comparison, entity: str | None, project: str, x: str = "Step"):
    """The report, unsaved: one panel grid over the compared runs (pure: no W&B server involved)."""
    import wandb_workspaces.reports.v2 as wr

    groups = sorted({run.config.get("logger.group") for run in comparison.runs if run.sweep})
    if comparison.sweeps and len(groups) == 1 and all(run.sweep for run in comparison.runs):
        filters = f"Group == '{groups[0]}'"
    else:
        filters = "ID in [" + ", ".join(f"'{run.wandb_run_id}'" for run in comparison.runs) + "]"
    runset = wr.Runset(entity=entity, project=project, name=f"{len(comparison.runs)} runs", filters=filters)
    keys = [key for key in comparison.differing_keys if any(key in run.config for run in comparison.runs)]
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key), log=_log_scale(comparison, key))
               for key in keys]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(comparison.metric)))
    panels = [
        wr.LinePlot(title="train loss", x=x, y=["loss"]),
        wr.LinePlot(title=curve_title(comparison.curve), x=x, y=[comparison.curve]),
        wr.ParallelCoordinatesPlot(title=f"config vs {comparison.metric}", columns=columns),
        wr.ParameterImportancePlot(with_respect_to=comparison.metric),
        wr.RunComparer(diff_only="split"),
    ]
    title = (f"compare: sweep {comparison.sweeps[0].name}" if len(comparison.sweeps) == 1
             else f"compare: {len(comparison.runs)} runs")
    kwargs = {"entity": entity} if entity else {}  # None: the logged-in user's default entity
    return wr.Report(project=project, title=title, description=f"sorted by {comparison.metric} ({comparison.mode}); "
                     "made by `orchestrator compare --wandb-report`", blocks=[wr.PanelGrid(runsets=[runset],
                     panels=panels)], **kwargs)


def publish(comparison: Comparison, x: str = "step") -> str:
    """Save the report on the W&B server; returns its URL. `x`: the curves' axis, step or tokens."""
    first = comparison.runs[0].config
    report = build(comparison, first.get("logger.entity"), first.get("logger.project") or "orchestrator",
                   "Step" if x == "step" else x)
    report.save()
    return report.url


def _log_scale(comparison: Comparison, key: str) -> bool:
    values = [run.config.get(key) for run in comparison.runs]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return len(numbers) == len(values) and min(numbers) > 0 and max(numbers) / min(numbers) >= 10
