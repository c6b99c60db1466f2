"""The `k8s` backend: a KubeRay RayJob manifest (plus the ConfigMap holding the job file).

KubeRay creates the Ray cluster (a head pod that runs the driver and takes no training work,
and `cluster.nodes` worker pods, one Ray Train worker per GPU), submits the entrypoint, and
deletes the cluster after the job. Every pod mounts the shared volume (run directory, data
cache) and gets WANDB_API_KEY from a Secret reference, never a literal value. `run_dir` and
`data.cache_dir` must lie on that volume: anywhere else they vanish with the pod.
"""

from __future__ import annotations

import posixpath
import shutil
import subprocess
from pathlib import Path

from orchestrator.config.schema import Config
from orchestrator.errors import TrainingError
from orchestrator.plan.plan import Plan

MANIFEST = "rayjob.yaml"
JOB_FILE_DIR = "/etc/orchestrator"


def cpus_per_node(cfg: Config, plan: Plan) -> int:
    return cfg.cluster.k8s.cpus_per_node or plan.ranks_per_node * cfg.cluster.cpus_per_worker


def off_the_volume(cfg: Config, run_dir: str, cache_dir: str) -> list[str]:
    """One problem per folder that does not lie under cluster.k8s.mount_path, the only storage the pods share."""
    mount = posixpath.normpath(cfg.cluster.k8s.mount_path)
    problems = []
    for key, value, default in (("run_dir", run_dir, f"{mount}/runs/<name>"),
                                ("data.cache_dir", cache_dir, f"{mount}/cache")):
        path = posixpath.normpath(value)
        if not (posixpath.isabs(path) and (path == mount or path.startswith(mount.rstrip("/") + "/"))):
            problems.append(f"{key}={value}: not on the shared volume (cluster.k8s.mount_path={mount}), so the "
                            f"pods would not share it and it would vanish with them; leave {key} unset "
                            f"(default {default}) or pick a folder under {mount}")
    return problems


def _container(name: str, cfg: Config, resources: dict, mounts: list[dict]) -> dict:
    k = cfg.cluster.k8s
    return {
        "name": name,
        "image": k.image,
        "env": [{"name": "WANDB_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": k.wandb_secret, "key": "api-key", "optional": True}}}],
        "resources": {"requests": resources, "limits": resources},
        "volumeMounts": [{"name": "shared", "mountPath": k.mount_path},
                         {"name": "dshm", "mountPath": "/dev/shm"}, *mounts],
    }


def _volumes(cfg: Config, extra: list[dict]) -> list[dict]:
    return [
        {"name": "shared", "persistentVolumeClaim": {"claimName": cfg.cluster.k8s.shared_volume_claim}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},  # NCCL and DataLoader need more than 64 MB
        *extra,
    ]


def render(cfg: Config, plan: Plan, name: str, job_yaml: str) -> list[dict]:
    """The manifest's documents: a ConfigMap with the job file, then the RayJob."""
    c, k = cfg.cluster, cfg.cluster.k8s
    labels = {"app.kubernetes.io/name": "orchestrator", "orchestrator/run": name}
    worker_resources = {"cpu": str(cpus_per_node(cfg, plan))}
    if c.gpus_per_node:
        worker_resources["nvidia.com/gpu"] = str(c.gpus_per_node)
    if c.cpu_memory_gb:
        worker_resources["memory"] = f"{int(c.cpu_memory_gb)}G"
    job_file_mount = {"name": "job", "mountPath": JOB_FILE_DIR, "readOnly": True}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-job", "namespace": k.namespace, "labels": labels},
        "data": {"job.yaml": job_yaml},
    }
    ray_job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "namespace": k.namespace, "labels": labels},
        "spec": {
            "entrypoint": f"python -m orchestrator {cfg.command()} --config {JOB_FILE_DIR}/job.yaml",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
            "backoffLimit": k.backoff_limit,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "rayVersion": k.ray_version,
                "headGroupSpec": {
                    # The head runs the driver only: no CPUs for training workers there.
                    "rayStartParams": {"num-cpus": "0"},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [_container("ray-head", cfg, {"cpu": "2", "memory": "8G"},
                                                      [job_file_mount])],
                            "volumes": _volumes(cfg, [{"name": "job",
                                                       "configMap": {"name": f"{name}-job"}}]),
                        },
                    },
                },
                "workerGroupSpecs": [{
                    "groupName": "workers",
                    "replicas": c.nodes,
                    "minReplicas": c.nodes,
                    "maxReplicas": c.nodes,
                    "rayStartParams": {},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "containers": [_container("ray-worker", cfg, worker_resources, [])],
                            "volumes": _volumes(cfg, []),
                        },
                    },
                }],
            },
        },
    }
    return [config_map, ray_job]


def to_yaml(documents: list[dict]) -> str:
    """Plain YAML for kubectl: no anchors, multi-line strings (the job file) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(documents, Dumper=Dumper, sort_keys=False)


def kubectl_context() -> str | None:
    """The current kubectl context, or None when kubectl is missing or has no context."""
    if shutil.which("kubectl") is None:
        return None
    result = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip() or None if result.returncode == 0 else None


def apply(manifest: Path) -> str:
    result = subprocess.run(["kubectl", "apply", "-f", str(manifest)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise TrainingError(f"kubectl apply -f {manifest}: {result.stderr.strip()}")
    return result.stdout.strip()
