"""The `ray` backend: a Ray cluster that already runs, joined by the driver or reached through
Ray's Job Submission API (the dashboard's HTTP endpoint, port 8265).

`connect` is what the driver does on every backend but `local` (Slurm and KubeRay start the
Ray cluster, then run the driver on its head). The job functions back `orchestrator submit`,
`status`, `logs` and `stop`. Secrets never travel in the runtime environment: W&B's key must be
in the environment of the cluster's nodes (or a Kubernetes Secret), as Ray's docs advise.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.config.schema import Backend, ClusterConfig
from orchestrator.errors import ConfigError, TrainingError
from orchestrator.launch import worker_output
from orchestrator.launch.worker_process import SETUP_HOOK

STOP_GRACE_S = 300
"""How long `orchestrator stop` lets a job checkpoint after SIGTERM before Ray kills it."""


def connect(cluster: ClusterConfig, nodes: int, workers: int, gpus_per_worker: int,
            env_vars: dict[str, str] | None = None) -> None:
    """Join the running cluster at cluster.address, wait until `nodes` machines are in it, and check
    it can place `workers` workers (else leave it again and raise ConfigError). `env_vars` go to every
    process of this job."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    wait_for_head(cluster.address, cluster.join_timeout_s)
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, configure_logging=True,
                 runtime_env={"worker_process_setup_hook": SETUP_HOOK, **({"env_vars": env_vars} if env_vars else {})})
    except (ConnectionError, RuntimeError, ValueError) as error:
        hint = "" if cluster.name is Backend.ray else (
            f"; cluster={cluster.name.value} jobs start with `orchestrator submit`")
        raise ConfigError([f"cluster.address={cluster.address}: cannot join a Ray cluster there "
                           f"({str(error).strip().splitlines()[0]}){hint}"]) from None
    worker_output.install()
    wait_for_nodes(nodes, cluster.join_timeout_s)
    try:
        preflight(cluster, workers, gpus_per_worker)
    except ConfigError:
        disconnect()
        raise


def wait_for_head(address: str, timeout_s: float) -> None:
    """Wait until the head's GCS port accepts connections (Slurm starts it beside the driver).

    ray.init itself retries an unreachable address for minutes; this fails within the bound,
    with the address in the message. `auto` without a host:port RAY_ADDRESS is left to Ray.
    """
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    if not address or "://" in address:
        return
    parsed = urlparse(f"//{address}")
    host, port = parsed.hostname, parsed.port or 6379
    deadline = time.monotonic() + timeout_s
    for attempt in itertools.count():
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                raise TrainingError(f"no Ray head answers at {host}:{port} within cluster.join_timeout_s="
                                    f"{timeout_s:g}s ({error.strerror or error})") from None
        if attempt % 10 == 0:
            print(f"waiting for the Ray head at {host}:{port}", flush=True)
        time.sleep(1)


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def wait_for_nodes(nodes: int, timeout_s: float) -> None:
    """Multi-node launches hang when a node never joins; fail within the bound instead."""
    deadline = time.monotonic() + timeout_s
    seen = alive_nodes()
    while seen < nodes:
        if time.monotonic() > deadline:
            raise TrainingError(f"only {seen} of cluster.nodes={nodes} Ray nodes joined within "
                                f"cluster.join_timeout_s={timeout_s:g}s; check the other nodes' logs")
        print(f"waiting for Ray nodes: {seen}/{nodes} joined", flush=True)
        time.sleep(2)
        seen = alive_nodes()
    print(f"Ray cluster: {seen} node(s)", flush=True)


def placeable(bundle: dict[str, float], workers: int, nodes: list[dict[str, float]]) -> str | None:
    """Why `workers` bundles cannot be placed on nodes with these total resources, else None.

    Pure arithmetic (Ray's STRICT placement is not needed: workers may share a node or spread).
    """
    wanted = {key: amount for key, amount in bundle.items() if amount}
    per_node = [min(int(res.get(key, 0) // amount) for key, amount in wanted.items()) if wanted else workers
                for res in nodes]
    need = " + ".join(f"{amount:g} {key}" for key, amount in wanted.items())
    if not per_node or max(per_node) == 0:
        largest = max(nodes, key=lambda res: tuple(res.get(key, 0) for key in wanted), default={})
        have = ", ".join(f"{largest.get(key, 0):g} {key}" for key in wanted)
        return f"one worker needs {need}, but no node has that (the largest has {have})"
    if sum(per_node) < workers:
        return f"{workers} workers of {need} each, but the cluster's {len(nodes)} node(s) hold only {sum(per_node)}"
    return None


def preflight(cluster: ClusterConfig, workers: int, gpus_per_worker: int) -> None:
    """Refuse, before anything is written, a job the joined cluster cannot place.

    A cluster with an autoscaler (Ray's cluster config names node types it can add) gets up to
    cluster.join_timeout_s to grow; a fixed cluster is refused at once.
    """
    import ray

    bundle = {"CPU": float(cluster.cpus_per_worker), "GPU": float(gpus_per_worker)}
    asked = (f"cluster.num_workers={workers} x (cluster.cpus_per_worker={cluster.cpus_per_worker}, "
             f"{gpus_per_worker} GPU)")
    deadline = time.monotonic() + cluster.join_timeout_s
    while True:
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        problem = placeable(bundle, workers, nodes)
        if problem is None:
            return
        largest = ray._private.state.state.get_max_resources_from_cluster_config()  # None: no autoscaler
        if largest is not None and placeable(bundle, workers, [largest]) is not None:
            problem += ", and the autoscaler's largest cluster would not hold it either"
        elif largest is not None and time.monotonic() > deadline:
            problem += f" after waiting cluster.join_timeout_s={cluster.join_timeout_s}s for the autoscaler"
        elif largest is not None:
            print(f"waiting for the autoscaler: {problem}", flush=True)
            time.sleep(5)
            continue
        raise ConfigError([f"{asked}: the Ray cluster cannot place this job: {problem}; ask for less, or add nodes"])


def disconnect(timeout_s: float = 60.0) -> None:
    """Leave the cluster (it keeps running), without letting Ray's shutdown hang the command."""
    from orchestrator.launch.local import shutdown_within

    shutdown_within(timeout_s)


def dashboard_url(cluster: ClusterConfig) -> str:
    """Where the Job Submission API listens: cluster.dashboard_url, RAY_ADDRESS, or the head's port 8265."""
    if cluster.dashboard_url:
        return cluster.dashboard_url.rstrip("/")
    env = os.environ.get("RAY_ADDRESS", "")
    if env.startswith(("http://", "https://")):
        return env.rstrip("/")
    host = "127.0.0.1" if cluster.address == "auto" else urlparse(f"//{cluster.address}").hostname
    return f"http://{host}:8265"


def client(url: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ConfigError([f"cannot reach Ray's Job Submission API at {url} ({reason}); "
                           "pass --address or set cluster.dashboard_url"]) from None


def _agent_not_ready(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and "No available agent" in str(error)


def submit(url: str, job_dir: Path, submission_id: str, env_vars: dict[str, str], command: str = "train") -> str:
    """Send the job: its folder (the job file) becomes the working directory on the cluster.

    The driver adds the workers' setup hook itself (connect); Ray refuses a key set twice.
    A head that has just started answers "No available agent" for a while: retried for a minute.
    """
    from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

    runtime_env = {
        "working_dir": str(job_dir),
        "env_vars": {**env_vars, "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)},
    }
    send = retry(retry=retry_if_exception(_agent_not_ready), stop=stop_after_delay(60), wait=wait_fixed(2),
                 reraise=True)(client(url).submit_job)
    try:
        return send(entrypoint=f"python -m orchestrator {command} --config job.yaml", runtime_env=runtime_env,
                    submission_id=submission_id, metadata={"submitted_by": "orchestrator"})
    except RuntimeError as error:
        raise TrainingError(f"Ray refused the job at {url}: {str(error).strip().splitlines()[0]}") from None


def follow(url: str, job_id: str) -> int:
    """Print the job's logs as they come, then wait for the job and return its driver's exit code."""
    jobs = client(url)

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    info = jobs.get_job_info(job_id)  # the exit code as the CLI reports it (0, 1, 2, 75)
    while not info.status.is_terminal():
        time.sleep(1)
        info = jobs.get_job_info(job_id)
    if info.status.value == "SUCCEEDED":
        return 0
    return info.driver_exit_code if info.driver_exit_code is not None else 1


def status(url: str, job_id: str) -> str:
    info = client(url).get_job_info(job_id)
    line = f"{job_id}: {info.status.value}"
    if info.driver_exit_code is not None:
        line += f" (exit code {info.driver_exit_code})"
    if info.message:
        line += f": {info.message}"
    return line


def logs(url: str, job_id: str) -> str:
    return client(url).get_job_logs(job_id)


def stop(url: str, job_id: str) -> bool:
    """Ask the job to stop: its driver gets SIGTERM, checkpoints at the next step and exits 75."""
    return client(url).stop_job(job_id)
