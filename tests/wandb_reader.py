"""W&B's own reader of offline runs, for tests that check what W&B recorded.

`wandb leet inspect --json PATH` prints every record of a run's transaction log (one JSON object
a line); with `--summary` one object: the run's state, latest metrics and config. PATH is a
`.wandb` file, a run folder holding one, or a `wandb/` folder (its latest run).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def inspect(path: Path, *flags: str) -> list[dict]:
    """The records of the W&B run at `path`; with --summary, a one-element list of the summary object."""
    result = subprocess.run(["wandb", "leet", "inspect", *flags, "--json", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if "--summary" in flags:
        return [json.loads(result.stdout)]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def history(path: Path) -> list[dict]:
    """One dict per logged step (W&B's `_step` included), in the order they were logged."""
    return [record["history"]["item"] for record in inspect(path) if record.get("type") == "history"]


def run_ids(path: Path) -> set[str]:
    """The run ids the log's run records carry (a killed attempt may have written none)."""
    return {record["run"]["run_id"] for record in inspect(path) if record.get("type") == "run"}
