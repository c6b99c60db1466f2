"""The `local` backend: an embedded Ray cluster started inside the driver process, or the warm one
`orchestrator cluster up` keeps running between commands (launch/warm.py), joined instead.

Ray's dashboard is not started: nothing here uses it (train/ray_trainer.py drops the Train
placement-group cleaner that queried Ray's state API through it), and it cost a second of
start-up. Several embedded clusters run side by side on one machine (two terminals, a sweep
beside a run): each knows its own GCS address and hands it to every process of its job as
RAY_ADDRESS, so Ray's helpers that look a cluster up find theirs instead of failing on
"multiple active Ray instances". A reaper process ends the embedded cluster's processes when
the driver dies, even by SIGKILL (launch/reaper.py). A request this machine cannot hold is
refused before Ray starts (`preflight`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess

from orchestrator.config.schema import ClusterConfig
from orchestrator.launch import worker_output
from orchestrator.launch.worker_process import SETUP_HOOK
from orchestrator.machine import available_cpus, free_port, visible_gpus

_reaper: subprocess.Popen | None = None
_joined_warm = False
_job_launcher: subprocess.Popen | None = None


def preflight(cluster: ClusterConfig) -> list[str]:
    """Problems with placing the job on this machine, in one line each (numbers included)."""
    problems = []
    needed, cpus = cluster.num_workers * cluster.cpus_per_worker, available_cpus()
    if needed > cpus:
        problems.append(
            f"cluster.num_workers={cluster.num_workers} x cluster.cpus_per_worker={cluster.cpus_per_worker} = "
            f"{needed} CPUs, but this machine has {cpus}; lower them, or run on a cluster (cluster=ray|slurm|k8s)")
    if cluster.gpus_per_worker:
        needed, gpus = cluster.num_workers * cluster.gpus_per_worker, visible_gpus()
        if needed > gpus:
            problems.append(
                f"cluster.num_workers={cluster.num_workers} x cluster.gpus_per_worker={cluster.gpus_per_worker} = "
                f"{needed} GPUs, but this machine has {gpus}; lower them, or cluster.gpus_per_worker=0 for CPU workers")
    return problems


def system_config(lean: bool) -> dict | None:
    """Ray's settings for a cluster on this machine, embedded or warm (launch/warm.py). Ray's worker start-up
    concurrency and worker niceness stay Ray's: raising the one and lowering the other measured no faster start
    (bench/RESULTS.md)."""
    if not lean:
        return None
    # Ray would prestart one idle worker process per CPU for each driver, but every process of our job
    # needs the job's runtime environment, so none was used: they only took CPU from the start-up.
    return {"prestart_worker_first_driver": False}


def start(cluster: ClusterConfig, log_to_driver: bool = True, env_vars: dict[str, str] | None = None,
          lean: bool = False, rank_env: dict[str, str] | None = None) -> bool:
    """Start Ray in this process, or join the warm cluster `orchestrator cluster up` keeps (launch/warm.py),
    unless Ray already runs here (a test session's shared cluster).

    Returns True when this call started or joined it, so the caller knows to stop (or leave) it again.
    `lean` (a single training run): no dashboard and no prestarted workers, seconds sooner. A sweep's
    cluster keeps Ray's defaults: its trials failed without them (not understood yet, see docs/design.md).
    `log_to_driver` forwards workers' output (rank 0's progress lines) to this terminal;
    `env_vars` go to every process of the job. `rank_env` (CPU ranks only): what Ray Train adds to the ranks'
    environment; given, a cluster started here comes with a launcher of its own for the ranks, which imports
    their libraries while Ray starts (launch/resident.py), and they start as copies of it; joining the warm
    cluster, the launcher of the ranks' environment is started now unless it runs.
    """
    import ray

    # The watcher polls cloud node-preemption notices; on one machine it only adds log noise.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if ray.is_initialized():
        return False
    global _reaper, _joined_warm, _job_launcher
    from orchestrator.launch import handover, resident, warm

    if os.environ.get(resident.NO_LAUNCHER_ENV):
        rank_env = None

    def job_env(address: str) -> dict:
        # Job-level only (Ray ignores it per actor): stop signals to a worker become checkpoint-and-stop.
        return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": {**(env_vars or {}), "RAY_ADDRESS": address}}

    record = warm.running()
    if record:  # `orchestrator cluster up` keeps one running: no cluster to start
        runtime_env = job_env(record["address"])
        if rank_env is not None and resident.running():  # the ranks start as copies of a launcher's
            runtime_env["py_executable"] = handover.worker_command_prefix()
            handover.ask_for_a_rank_launcher({**runtime_env["env_vars"], **rank_env})
        warm.use_token(record["token"])
        with _our_signal_handlers():
            ray.init(address=record["address"], logging_level=logging.WARNING, log_to_driver=log_to_driver,
                     runtime_env=runtime_env, configure_logging=True)
        _joined_warm = True
        if log_to_driver:
            worker_output.install()
        print(f"joined the warm local Ray cluster at {record['address']} (`orchestrator cluster down` ends it)",
              flush=True)
        return True
    from ray._private.services import get_node_ip_address

    port = free_port()  # chosen here so the job's processes can be told the address up front
    runtime_env = job_env(f"{get_node_ip_address()}:{port}")
    if rank_env is not None:
        _job_launcher, name = resident.start_for_job({**os.environ, **runtime_env["env_vars"], **rank_env})
        runtime_env["env_vars"][resident.JOB_LAUNCHER_ENV] = name
        runtime_env["py_executable"] = handover.worker_command_prefix()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        with _our_signal_handlers():
            ray.init(
                # "local" always starts a new cluster: a bare ray.init() joins whatever `ray start` left
                # in /tmp/ray/ray_current_cluster on this machine, even a cluster that is gone.
                address="local",
                num_cpus=available_cpus(),  # what preflight() checked the request against
                include_dashboard=not lean,  # about a second of start-up; a single run does not use it
                dashboard_host="127.0.0.1",
                logging_level=logging.WARNING,
                log_to_driver=log_to_driver,
                runtime_env=runtime_env,
                configure_logging=True,
                _system_config=system_config(lean),
            )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]
    if log_to_driver:
        worker_output.install()
    from orchestrator.launch import reaper

    node = ray._private.worker._global_node
    _reaper = reaper.watch([info.process.pid for infos in node.all_processes.values() for info in infos]
                           + ([_job_launcher.pid] if _job_launcher else []))
    return True


@contextlib.contextmanager
def _our_signal_handlers():
    """While Ray starts in this process. Ray's driver sets SIGTERM to `sys.exit(15)` as it starts, replacing the
    handler the command installed (train/preemption.py), and a start cut short leaves what it had started
    running (its agents outlive their raylet). So where the command handles SIGTERM itself, Ray's handler is
    not installed; and a start that does not finish ends every process it started."""
    import signal

    import ray._private.utils as ray_utils

    keep = ray_utils.set_sigterm_handler
    if callable(signal.getsignal(signal.SIGTERM)):
        ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    except BaseException:
        from orchestrator.launch.reaper import end_descendants

        end_descendants()
        raise
    finally:
        ray_utils.set_sigterm_handler = keep


def gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def shutdown_within(timeout_s: float) -> bool:
    """ray.shutdown(), bounded: True if it returned in time.

    Ray 2.60's ray.shutdown() can block forever closing its GCS error subscriber (seen at the
    end of long-lived drivers). When it does, Ray's exit hook is dropped too: it would wait on
    the same lock at interpreter exit.
    """
    import atexit
    import threading

    import ray

    closer = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        atexit.unregister(ray.shutdown)
        return False
    return True


def stop(timeout_s: float = 60.0) -> None:
    """Shut the embedded cluster down, never hanging the command: after `timeout_s` we kill
    the cluster's processes ourselves."""
    import ray

    global _joined_warm
    if not ray.is_initialized():
        return
    if _joined_warm:  # leave the warm cluster running
        _joined_warm = False
        shutdown_within(timeout_s)
        return
    node = ray._private.worker._global_node
    if node is not None:
        _end_autoscaler_monitor(node)
    if not shutdown_within(timeout_s):
        print(f"warning: ray.shutdown() did not return in {timeout_s:.0f}s; killing the local Ray processes",
              flush=True)
        if node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=False)
    _end_job_launcher()
    _end_reaper()


def _end_autoscaler_monitor(node) -> None:
    """Ray's autoscaler monitor answers SIGTERM by reporting to the GCS, which ray.shutdown() has ended by then,
    so Ray SIGKILLs it after a second's wait: a second of every command's exit (issue 31's 2 s). It keeps
    nothing that outlives the cluster, so it is killed first."""
    from ray._private import ray_constants

    for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
        info.process.kill()
        info.process.wait()


def _end_job_launcher() -> None:
    """It ignores SIGTERM (launch/fork_server.py) and has nothing to clean up."""
    global _job_launcher
    if _job_launcher is not None:
        _job_launcher.kill()
        _job_launcher.wait()
        _job_launcher = None


def _end_reaper() -> None:
    """Closing the pipe makes the reaper kill whatever the shutdown left behind, and exit."""
    global _reaper
    if _reaper is not None:
        _reaper.stdin.close()
        _reaper.wait(timeout=30)
        _reaper = None
