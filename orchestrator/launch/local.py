"""The `local` backend: an embedded Ray cluster started inside the driver process.

Ray's dashboard (needed by Ray's state API, which Ray Train's cleanup uses) binds to
127.0.0.1 only. The cluster gets at least as many logical CPUs as the workers reserve, so
asking for more workers than cores oversubscribes instead of waiting forever.
"""

from __future__ import annotations

import logging
import os

from orchestrator.config.schema import ClusterConfig
from orchestrator.train.signals import SETUP_HOOK


def start(cluster: ClusterConfig, log_to_driver: bool = True) -> bool:
    """Start Ray in this process unless it already runs (a test session's shared cluster).

    Returns True when this call started it, so the caller knows to stop it again.
    `log_to_driver` forwards workers' output (rank 0's progress lines) to this terminal.
    """
    import ray

    # The watcher polls cloud node-preemption notices; on one machine it only adds log noise.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    started = not ray.is_initialized()
    if started:
        needed = cluster.num_workers * cluster.cpus_per_worker
        ray.init(
            # "local" always starts a new cluster: a bare ray.init() joins whatever `ray start` left
            # in /tmp/ray/ray_current_cluster on this machine, even a cluster that is gone.
            address="local",
            num_cpus=max(os.cpu_count() or 1, needed),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=log_to_driver,
            # Job-level only (Ray ignores it per actor): stop signals to a worker become checkpoint-and-stop.
            runtime_env={"worker_process_setup_hook": SETUP_HOOK},
            configure_logging=True,
        )
    return started


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

    if not ray.is_initialized():
        return
    node = ray._private.worker._global_node
    if not shutdown_within(timeout_s):
        print(f"warning: ray.shutdown() did not return in {timeout_s:.0f}s; killing the local Ray processes",
              flush=True)
        if node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=False)
