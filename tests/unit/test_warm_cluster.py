"""`orchestrator cluster up|down`: the record of the warm cluster, and what a stale one does."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from orchestrator.launch import warm


def test_a_record_whose_cluster_is_gone_is_ignored_and_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "local-cluster.json").write_text(json.dumps(
        {"address": "127.0.0.1:1", "pid": dead.pid, "started": 0.0, "token": "x", "num_cpus": 2, "log": "x"}))
    assert warm.running() is None
    assert not (tmp_path / "local-cluster.json").exists()
    assert warm.down() is None


def test_a_live_process_that_does_not_answer_is_not_a_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_CACHE", str(tmp_path))
    me = psutil.Process()
    (tmp_path / "local-cluster.json").write_text(json.dumps(
        {"address": "127.0.0.1:1", "pid": me.pid, "started": me.create_time(), "token": "x", "num_cpus": 2,
         "log": "x"}))
    assert warm.running() is None  # nothing listens on port 1


def test_the_cli_says_when_no_cluster_runs(tmp_path):
    import os

    result = subprocess.run([sys.executable, "-m", "orchestrator", "cluster", "status"], capture_output=True,
                            text=True, env={**os.environ, "ORCHESTRATOR_CACHE": str(tmp_path)}, timeout=60)
    assert result.returncode == 0 and "no local Ray cluster runs" in result.stdout
