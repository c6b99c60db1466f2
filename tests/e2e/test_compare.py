"""`orchestrator compare` end to end on a real sweep: the session's 4-trial grid over optim.lr with
ASHA (tests/e2e/conftest.py), then the CLI's table, JSON, PNG and HTML on it; the HTML opened in a
real headless Chromium.

Chromium is Debian's (tests/install-system-deps.sh). Without it the browser test skips, except
under CI=true, where a skip would hide a broken runner: there it fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.browser import chromium, open_page
from tests.helpers import LR_GRID, orchestrator


def test_the_table_of_a_sweep(lr_grid):
    result = orchestrator("compare", str(lr_grid))
    assert result.returncode == 0, result.stderr
    record = json.loads((lr_grid / "sweep.json").read_text())
    trials = {t["id"]: t for t in record["trials"]}
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines() if line.startswith("│")]
    assert sorted(row[0].strip() for row in rows) == sorted(trials)  # one row per trial
    best = [trials[row[0].strip()]["best_metric"] for row in rows]
    assert best == sorted(best)  # best val loss first
    header = next(line for line in result.stdout.splitlines() if line.startswith("┃")).split("┃")[1:-1]
    assert header[-1].strip() == "optim.lr" and "optim.lr" not in "".join(header[:-1])  # the searched key only
    stopped = [t for t in record["trials"] if t["status"] == "early_stopped"]
    assert stopped, "ASHA stopped no trial: the grid no longer exercises early stops"
    for trial in stopped:
        assert f"early-stopped at {trial['steps']}" in result.stdout
        assert f"{trial['id']} at step {trial['steps']}" in result.stdout.split("ASHA stopped", 1)[1]
    best_id = min((t for t in record["trials"] if t["status"] == "completed"), key=lambda t: t["final_metric"])["id"]
    line = next(line for line in result.stdout.splitlines() if "best trial" in line)
    assert best_id in line and f"optim.lr={trials[best_id]['overrides']['optim.lr']}" in line
    assert line.split(": ", 1)[1].startswith("orchestrator train ")


def test_two_runs_that_differ_only_in_the_learning_rate(lr_grid):
    run_a, run_b = sorted((lr_grid / "trials").iterdir())[:2]
    result = orchestrator("compare", str(run_a), str(run_b), "--format", "json")
    assert result.returncode == 0, result.stderr
    compared = json.loads(result.stdout)
    assert compared["differing_keys"] == ["optim.lr"]
    for row in compared["runs"]:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert (row["final_train_loss"], row["steps"], row["status"]) == (
            summary["final_train_loss"], summary["steps"], summary["status"])
        assert set(row["config"]) == {"optim.lr"}


def test_png_lands_in_the_sweep_and_html_opens_in_chromium_without_requests_or_errors(lr_grid, tmp_path):
    report = tmp_path / "report.html"
    result = orchestrator("compare", str(lr_grid), "--png", "--html", str(report))
    assert result.returncode == 0, result.stderr
    assert (lr_grid / "compare.png").read_bytes()[:4] == b"\x89PNG"
    if chromium() is None:
        message = "chromium not installed (run tests/install-system-deps.sh as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    page = open_page(report, """({
        rows: document.querySelectorAll('#runs tbody tr').length,
        curves: document.querySelectorAll('#curves .scatterlayer .trace').length,
        axes: [...document.querySelectorAll('#parcoords-0 .parcoords .axis-title')].map(e => e.textContent),
        drawn: document.querySelectorAll('#parcoords-0 canvas').length})""")
    (tmp_path / "report.png").write_bytes(page.screenshot)
    assert page.requests == [report.resolve().as_uri()]  # the page itself, nothing else
    assert page.errors == []
    assert page.value["rows"] == len(LR_GRID)
    assert page.value["curves"] == 2 * len(LR_GRID)  # train and val loss of each run
    assert page.value["axes"] == ["log10 optim.lr", "best val_loss"] and page.value["drawn"] > 0
    assert page.screenshot[:4] == b"\x89PNG" and len(page.screenshot) > 50_000


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    result = orchestrator("compare", str(tmp_path / "notes"), "--html", str(tmp_path / "r.html"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'notes'}: not a run directory (no config.yaml with run.json or metrics.jsonl) "
        "or sweep directory (no sweep.json or trials/)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
