"""The commands about clusters rather than runs: `orchestrator cluster up|status|down` (a local Ray
cluster kept warm between commands, launch/warm.py, and the resident launchers beside it,
launch/resident.py) and `orchestrator status|logs|stop <job_id>` (a Ray job that `orchestrator submit
cluster=ray` sent, through Ray's Job Submission API, launch/ray_cluster.py). Their parsers live in cli.py;
their bodies here, above launch/.
"""

from __future__ import annotations

from orchestrator.errors import ConfigError


def cluster(action: str, num_cpus: int | None) -> int:
    """`orchestrator cluster up|status|down [--num-cpus N]`."""
    from orchestrator.launch import resident, warm

    if action == "up":
        from orchestrator.machine import available_cpus

        if num_cpus is not None and num_cpus < 1:
            raise ConfigError([f"--num-cpus={num_cpus}: must be at least 1"])
        record, started = warm.up(num_cpus or available_cpus())
        print(f"{'started' if started else 'already running:'} local Ray cluster at {record['address']} with "
              f"{record['num_cpus']} CPUs (log: {record['log']}); cluster=local commands join it until "
              "`orchestrator cluster down`", flush=True)
        launcher, started = resident.start()
        print(f"{'started' if started else 'already running:'} resident launcher, pid {launcher['pid']} (log: "
              f"{launcher['log']}); `orchestrator {'|'.join(resident.SERVED)}` run in copies of it, their imports "
              "done")
    elif action == "down":
        launcher = resident.stop()
        record = warm.down()
        print(f"stopped the resident launcher, pid {launcher['pid']}" if launcher else "no resident launcher runs")
        print(f"stopped the local Ray cluster at {record['address']}" if record else "no local Ray cluster runs")
    else:
        record, launcher = warm.running(), resident.running()
        print(f"running: {record['address']}, {record['num_cpus']} CPUs, pid {record['pid']} (log: {record['log']})"
              if record else "no local Ray cluster runs (`orchestrator cluster up` starts one)")
        print(f"resident launcher: pid {launcher['pid']} (log: {launcher['log']})" if launcher
              else "no resident launcher runs")
    return 0


def ray_job(command: str, job_id: str, address: str | None, follow: bool = False) -> int:
    """`orchestrator status|logs|stop <job_id> [--address URL] [--follow]` for a Ray job."""
    from orchestrator.config.schema import ClusterConfig
    from orchestrator.launch import ray_cluster

    url = address or ray_cluster.dashboard_url(ClusterConfig(name="ray"))
    try:
        if command == "status":
            print(ray_cluster.status(url, job_id))
        elif command == "stop":
            stopped = ray_cluster.stop(url, job_id)
            print(f"{job_id}: stop requested (it checkpoints at its next step)" if stopped
                  else f"{job_id}: already finished")
        elif follow:
            return ray_cluster.follow(url, job_id)
        else:
            print(ray_cluster.logs(url, job_id), end="")
    except RuntimeError as error:  # the Job Submission API's answer for an unknown id or a refused request
        raise ConfigError([f"{job_id}: {str(error).strip().splitlines()[0]}"]) from None
    return 0
