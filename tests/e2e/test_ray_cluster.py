"""cluster=ray against a real two-node Ray cluster on 127.0.0.1 (`ray start --head` + `ray start
--address`, 1 CPU each, token auth on): submit through the Job Submission API, train by joining,
stop with a checkpoint, lose a node. Two workers of 1 CPU each can only be placed one per node.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import TINY, orchestrator, survivors

pytestmark = pytest.mark.slow

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
SENTINEL = "sentinel-wandb-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _active_nodes(env: dict, gcs: str) -> int:
    result = subprocess.run([*RAY, "status", "--address", gcs], env=env, capture_output=True, text=True, timeout=60)
    active = result.stdout.split("Active:")[-1].split("Pending:")[0] if result.returncode == 0 else ""
    return sum(1 for line in active.splitlines() if "node_" in line)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (`ray start --block` would drain for 30 s), then the node's whole process group is killed."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # raylet, GCS, workers: everything this node started
    except ProcessLookupError:
        pass


def _controller_stacks() -> str:
    """Where Ray Train's controller is, for a hang's report (py-spy, when installed)."""
    pids = [p.pid for p in psutil.process_iter(["cmdline"]) if "TrainController" in " ".join(p.info["cmdline"] or [])]
    if not shutil.which("py-spy"):
        return f"controller pids {pids} (install py-spy for their stacks)"
    return "\n".join(subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True,
                                    timeout=60).stdout for pid in pids)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """(environment with the cluster's token, GCS address, Job Submission URL, the nodes' `ray start` processes)."""
    root = tmp_path_factory.mktemp("two-nodes")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    port, dashboard = _free_port(), _free_port()
    gcs, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    # Each node's dashboard agent needs a port of its own: the default (52365) is taken by the second
    # node, or by the test session's embedded cluster, and the head then has no agent to take jobs.
    common = ["start", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1"]
    nodes = [subprocess.Popen(
        [*RAY, *common, f"--dashboard-agent-listen-port={_free_port()}", "--head", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp_dir}"],
        env=env, stdout=open(root / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        deadline = time.monotonic() + 120
        while _active_nodes(env, gcs) < 1:
            assert time.monotonic() < deadline, (root / "head.log").read_text()[-2000:]
            time.sleep(2)
        nodes.append(subprocess.Popen(
            [*RAY, *common, f"--dashboard-agent-listen-port={_free_port()}", f"--address={gcs}"],
            env=env, stdout=open(root / "node2.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        while _active_nodes(env, gcs) < 2:
            assert time.monotonic() < deadline, (root / "node2.log").read_text()[-2000:]
            time.sleep(2)
        yield env, gcs, url, nodes
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def on_cluster(env: dict, *args: str, timeout: float = 600):
    """The CLI with this test's environment (RAY_ADDRESS and the cluster's token)."""
    return orchestrator(*args, timeout=timeout, env=env)


def _assert_trained_on_both_nodes(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["node_id_per_rank"]
    assert first != second  # one rank per Ray node
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [row["val_loss"] for row in rows if "val_loss" in row]
    assert val[-1] < val[0]


def test_train_joins_the_running_cluster(two_nodes, tmp_path):
    env, gcs, _, _ = two_nodes
    run_dir = tmp_path / "run"
    result = on_cluster(env, "train", "cluster=ray", f"cluster.address={gcs}", *TINY, "train.max_steps=20",
                          "train.eval_every=10", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _assert_trained_on_both_nodes(run_dir)


def test_a_submitted_job_stops_with_a_checkpoint_and_its_job_file_resumes_it_on_both_nodes(two_nodes, tmp_path):
    """Submit (a secret in the environment), stop once it trains, resubmit its job.yaml: it resumes from the stop's
    checkpoint and finishes with one rank on each node, its logs streamed, and the secret in no file it wrote."""
    env, _, url, _ = two_nodes
    run_dir = tmp_path / "run"
    result = on_cluster({**env, "WANDB_API_KEY": SENTINEL}, "submit", "cluster=ray", f"cluster.dashboard_url={url}",
                        "submit.follow=false", *TINY, "train.max_steps=100000", "train.eval_every=5",
                        f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = next(line.split()[3] for line in result.stdout.splitlines() if line.startswith("submitted Ray job"))
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 5:
        assert time.monotonic() < deadline, on_cluster(env, "logs", job_id, "--address", url).stdout[-3000:]
        time.sleep(1)
    assert on_cluster(env, "stop", job_id, "--address", url).returncode == 0
    while "STOPPED" not in (status := on_cluster(env, "status", job_id, "--address", url).stdout):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    preempted = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert preempted["event"] == "preempted"
    assert (run_dir / "checkpoints" / f"step_{preempted['step']:08d}" / "COMPLETE").exists()
    job_file = next((tmp_path / "runs").iterdir()) / "job.yaml"
    assert SENTINEL not in job_file.read_text()

    # The job file pins run_dir: resubmitting it continues from that checkpoint, to a lower max_steps.
    last = preempted["step"] + 3
    again = on_cluster(env, "submit", "--config", str(job_file), f"cluster.dashboard_url={url}", "submit.follow=true",
                       f"train.max_steps={last}")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"step {last}/{last}" in again.stdout  # the job's logs were streamed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == preempted["step"]
    _assert_trained_on_both_nodes(run_dir)
    resubmitted = next(line.split()[3] for line in again.stdout.splitlines() if line.startswith("submitted Ray job"))
    status = on_cluster(env, "status", resubmitted, "--address", url)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout


@pytest.mark.parametrize(("override", "message"), [
    ("cluster.cpus_per_worker=2", "one worker needs 2 CPU, but no node has that (the largest has 1 CPU)"),
    ("cluster.num_workers=3", "3 workers of 1 CPU each, but the cluster's 2 node(s) hold only 2"),
])
def test_a_job_the_cluster_cannot_place_is_refused_before_anything_is_written(two_nodes, tmp_path, override, message):
    env, gcs, _, _ = two_nodes
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = on_cluster(env, "train", "cluster=ray", f"cluster.address={gcs}", *TINY, override, f"run_dir={run_dir}",
                          timeout=120)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line and "the Ray cluster cannot place this job" in line
    assert time.monotonic() - started < 30
    assert not run_dir.exists()


def test_a_submitted_sweep_runs_its_trials_across_the_nodes(two_nodes, tmp_path):
    env, _, url, _ = two_nodes
    sweep_dir = tmp_path / "sweep"
    result = on_cluster(env, "submit", "cluster=ray", f"cluster.dashboard_url={url}", *TINY, "data.max_bytes=20000",
                          "optim.lr=1e-3,3e-3", "train.max_steps=10", "train.eval_every=5", f"sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "trial " in result.stdout and "completed at step 10" in result.stdout  # the sweep's lines, streamed
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert [t["status"] for t in record["trials"]] == ["completed", "completed"]
    for trial in record["trials"]:
        first, second = json.loads((Path(trial["run_dir"]) / "summary.json").read_text())["node_id_per_rank"]
        assert first != second  # each trial's two workers on the two nodes


def test_losing_a_node_fails_within_the_bound_then_resumes_on_what_is_left(two_nodes, spawn, tmp_path):
    """Last in this module: it kills the second node's raylet, and no test after it needs two nodes."""
    env, gcs, _, nodes = two_nodes
    run_dir = tmp_path / "run"
    job = ["train", "cluster=ray", f"cluster.address={gcs}", *TINY, "data.max_bytes=20000", "train.max_steps=60",
           "train.ckpt_every=5", "train.eval_every=0", f"run_dir={run_dir}"]
    driver = spawn([sys.executable, "-m", "orchestrator", *job, "cluster.join_timeout_s=20", "train.max_failures=1",
                    "train.collective_timeout_s=60"],
                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # 60 steps: at 30 the run once reached its end before the node was gone
    while not list((run_dir / "checkpoints").glob("step_*/COMPLETE")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[1][-3000:]
        time.sleep(0.2)
    # The node's raylet alone dies (its agent crashed, or the OOM killer took it): the processes it started for
    # the job notice their parent is gone and end (launch/worker_signals.py), so the job cannot hang on them.
    [raylet] = [p for p in psutil.Process(nodes[1].pid).children(recursive=True) if p.name() == "raylet"]
    workers = [p for p in raylet.children() if "RayTrainWorker" in " ".join(p.cmdline())]
    assert workers, [p.cmdline() for p in raylet.children()]
    raylet.kill()
    killed = time.monotonic()
    try:
        stdout, stderr = driver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stacks = _controller_stacks()
        driver.kill()
        stdout, stderr = driver.communicate()
        raise AssertionError(f"no end 300 s after the node was lost:\n{stdout[-3000:]}\n{stderr[-5000:]}\n"
                             f"Ray Train's controller:\n{stacks}") from None
    assert driver.returncode == 1, stderr[-3000:]
    took = time.monotonic() - killed
    # The lost rank's peer fails at once (or the watchdog ends it at 60 s); one restart is tried, and Ray Train
    # gives up placing it after 20 s, or, when its controller hangs past that, the watchdog ends it at 20 + 60 s:
    # cluster.join_timeout_s + train.collective_timeout_s + 60 s at most.
    assert took < 20 + 60 + 60
    assert survivors(workers, within=5) == [], "a training worker outlived its node's raylet"
    [line] = [line for line in stderr.splitlines() if line.startswith("error: ")]
    print(f"the command failed {took:.0f} s after the node was killed: {line}")  # shown by pytest -rP
    assert "could not place 2 workers within cluster.join_timeout_s=20s" in line
    step = int(line.split("the newest complete checkpoint is step ")[1].split(":")[0])

    resumed = on_cluster(env, *job, "cluster.num_workers=1")  # what is left: one node
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"elastic resume: step {step} was written by 2 rank(s), continuing on 1" in resumed.stdout
    rows = [json.loads(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 61))
