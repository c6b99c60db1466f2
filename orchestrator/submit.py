"""`orchestrator submit`: one job file, rendered into the launch artifact of the chosen backend.

The job file (`job.yaml`) is the composed config with the cluster-side run directory filled in
and interpolations such as `${oc.env:HOME}` kept, so they resolve where the job runs. Every
backend ends in the same command on the cluster: `python -m orchestrator train --config job.yaml`.
Nothing secret is written: the job file is redacted, scripts and manifests name secrets only
by reference, and the runtime environment carries no secret values. Every refusal (an unwritable
run directory, a job `sbatch --test-only` refuses, folders off the Kubernetes volume, an
unreachable Ray cluster) comes before the first file is written: exit 2, no run directory.

A command above launch/ (the backends it renders for and submits to) and sweep/ (a config with a
search space is submitted as a sweep, its space checked here first); the plan comes from plan/job.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import shutil
from pathlib import Path

from orchestrator.config.compose import compose_dictconfig, load_job_file, to_yaml, validated
from orchestrator.config.schema import Backend, Config
from orchestrator.errors import ConfigError
from orchestrator.paths import unwritable
from orchestrator.plan.job import resolve
from orchestrator.plan.plan import Plan
from orchestrator.redact import redact_text
from orchestrator.rundir import RunDir

JOB_FILE = "job.yaml"


def run_name(cfg: Config) -> str:
    """`<model>-<timestamp>`, usable as a Slurm job name and a Kubernetes object name."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    model = re.sub(r"[^a-z0-9-]+", "-", cfg.model.name.lower()).strip("-") or "model"
    return f"{model[:40]}-{stamp}"


def _compose(overrides: list[str], config_file: str | None):
    """(the job's DictConfig with interpolations kept, the validated Config)."""
    from omegaconf import OmegaConf

    job = load_job_file(config_file, overrides) if config_file else compose_dictconfig(overrides, resolve=False)
    resolved = job.copy()
    OmegaConf.resolve(resolved)
    cfg = validated(OmegaConf.to_object(resolved))  # type: ignore[arg-type]
    if cfg.cluster.name is Backend.local:
        raise ConfigError(["cluster=local: `orchestrator submit` sends jobs to cluster=ray, slurm or k8s; "
                           "run `orchestrator train` to train here"])
    return job, cfg


def _placement(cfg: Config, name: str, overrides: list[str]) -> tuple[Path, str, dict]:
    """(local folder for the rendered files, the run directory on the cluster, job-file overrides)."""
    chosen_dir = cfg.sweep.dir if cfg.command() == "sweep" else cfg.run_dir
    chosen = Path(chosen_dir).expanduser() if chosen_dir else None
    if cfg.cluster.name is Backend.slurm:  # the login node and the compute nodes share this filesystem
        run_dir = (chosen or Path("runs") / name).resolve()
        return run_dir, str(run_dir), {}
    folder = (Path("runs") / name).resolve()
    if cfg.cluster.name is Backend.k8s:
        mount = cfg.cluster.k8s.mount_path.rstrip("/")
        cache_chosen = any(o.startswith("data.cache_dir=") for o in overrides)
        updates = {} if cache_chosen else {"data": {"cache_dir": f"{mount}/cache"}}
        return folder, chosen_dir or f"{mount}/runs/{name}", updates
    return folder, chosen_dir or f"~/orchestrator/runs/{name}", {}  # ray: on the head node


def submit(overrides: list[str], config_file: str | None = None) -> int:
    """Submit a training run, or a sweep when the config has a search space (the sweep's driver then runs
    on the cluster, its trials spread over the cluster's nodes, `sweep.dir` in place of `run_dir`)."""
    from omegaconf import OmegaConf

    from orchestrator.config.overrides import split_overrides

    overrides, swept = split_overrides(overrides)
    job, cfg = _compose(overrides, config_file)
    if swept:
        job = OmegaConf.merge(job, {"sweep": {"params": swept}})
        cfg = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, params={**cfg.sweep.params, **swept}))
    if cfg.command() == "sweep":
        from orchestrator.sweep.driver import search_problems

        problems = search_problems(cfg, {}, overrides, config_file)[1]
        if problems:
            raise ConfigError(problems)
    plan = resolve(cfg).plan  # refuses a plan that does not fit; the job file keeps `job`, un-resolved
    name = run_name(cfg)
    folder, run_dir, updates = _placement(cfg, name, overrides)
    # The job file submits for real when resubmitted with --config, even if this call is a dry run.
    folder_key = {"run_dir": None, "sweep": {"dir": run_dir}} if cfg.command() == "sweep" else {"run_dir": run_dir}
    job = OmegaConf.merge(job, {**folder_key, "submit": {"dry_run": False}}, updates)
    job_text = redact_text(to_yaml(job))
    artifact = _render(cfg, plan, name, folder, run_dir, job_text)
    _preflight(cfg, plan, folder, run_dir, job.data.cache_dir, artifact)  # every refusal: before any file
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # leaf first
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JOB_FILE).write_text(job_text)
    if artifact is not None:
        (folder / artifact[0]).write_text(artifact[1])
    print(f"plan: {plan.describe()}", flush=True)
    if cfg.cluster.name is Backend.slurm:
        return _slurm(cfg, plan, folder, run_dir, created)
    backend = {Backend.k8s: _k8s, Backend.ray: _ray}[cfg.cluster.name]
    return backend(cfg, plan, name, folder, run_dir)


def _render(cfg: Config, plan: Plan, name: str, folder: Path, run_dir: str, job_text: str) -> tuple[str, str] | None:
    """(file name, text) of the launch artifact: the sbatch script or the RayJob manifest; None for ray."""
    if cfg.cluster.name is Backend.slurm:
        from orchestrator.launch import slurm

        return slurm.SCRIPT, slurm.render(cfg, plan, name, Path(run_dir), folder / JOB_FILE)
    if cfg.cluster.name is Backend.k8s:
        from orchestrator.launch import k8s

        return k8s.MANIFEST, k8s.to_yaml(k8s.render(cfg, plan, name, job_text))
    return None


def _preflight(cfg: Config, plan: Plan, folder: Path, run_dir: str, cache_dir: str,
               artifact: tuple[str, str] | None) -> None:
    """Refuse (ConfigError, exit 2) what cannot work, before anything is written or queued."""
    if cfg.cluster.name is Backend.slurm:
        _refuse_existing(folder)
        # The login node shares these folders with the compute nodes: what fails here fails there.
        problems = [unwritable("run_dir", run_dir)]
        if not cfg.submit.dry_run:  # a dry run writes only the run directory
            problems.append(unwritable("data.cache_dir", cache_dir))
        if any(problems):
            raise ConfigError([problem for problem in problems if problem])
        if not cfg.submit.dry_run and artifact is not None and shutil.which("sbatch"):
            from orchestrator.launch import slurm

            slurm.test_only(cfg, plan, artifact[1])
    elif cfg.cluster.name is Backend.k8s:
        from orchestrator.launch import k8s

        problems = k8s.off_the_volume(cfg, run_dir, cache_dir)
        if problems:
            raise ConfigError(problems)
    elif cfg.cluster.name is Backend.ray and not cfg.submit.dry_run:  # unreachable: say so, write nothing
        from orchestrator.launch import ray_cluster

        ray_cluster.client(ray_cluster.dashboard_url(cfg.cluster))


def _refuse_existing(run_dir: Path) -> None:
    if RunDir(run_dir).config.exists() or (run_dir / JOB_FILE).exists():
        raise ConfigError([f"run_dir={run_dir}: already holds a job; resubmit its script with "
                           f"`sbatch {run_dir}/job.sbatch`, or pick a new run_dir"])


def _slurm(cfg: Config, plan: Plan, folder: Path, run_dir: str, created: list[Path]) -> int:
    from orchestrator.launch import slurm

    script = folder / slurm.SCRIPT
    script.chmod(0o755)
    if cfg.submit.dry_run:
        print(script.read_text(), end="")
        print(f"dry run: wrote {script}; submit it with `sbatch {script}`")
        return 0
    job_id = slurm.submit(script)
    try:
        status = slurm.settle(cfg, plan, job_id)
    except slurm.Cancelled:  # it never ran: leave no run directory behind, so the fixed job can reuse run_dir
        script.unlink()
        (folder / JOB_FILE).unlink()
        for path in created:
            if any(path.iterdir()):
                break
            path.rmdir()
        raise
    print(f"submitted Slurm job {job_id} ({status}); run directory: {run_dir}")
    print(f"follow it with `squeue -j {job_id}` and `tail -f {run_dir}/slurm-{job_id}.out`")
    return 0


def _k8s(cfg: Config, plan: Plan, name: str, folder: Path, run_dir: str) -> int:
    from orchestrator.launch import k8s

    manifest = folder / k8s.MANIFEST
    context = None if cfg.submit.dry_run else k8s.kubectl_context()
    if context is None:
        print(f"{'dry run: ' if cfg.submit.dry_run else 'no kubectl context configured: '}wrote {manifest}; "
              f"apply it with `kubectl apply -f {manifest}`")
        return 0
    print(k8s.apply(manifest))
    print(f"submitted RayJob {cfg.cluster.k8s.namespace}/{name} to context {context}; run directory on the "
          f"shared volume: {run_dir}")
    print(f"follow it with `kubectl get rayjob -n {cfg.cluster.k8s.namespace} {name}`")
    return 0


def _ray(cfg: Config, plan: Plan, name: str, folder: Path, run_dir: str) -> int:
    from orchestrator.launch import ray_cluster

    url = ray_cluster.dashboard_url(cfg.cluster)
    if cfg.submit.dry_run:
        print(f"dry run: wrote {folder / JOB_FILE}; it would be submitted to {url} as {name}")
        return 0
    job_id = ray_cluster.submit(url, folder, name, {"PYTHONUNBUFFERED": "1"}, cfg.command())
    print(f"submitted Ray job {job_id} to {url}; run directory on the cluster: {run_dir}", flush=True)
    if not cfg.submit.follow:
        print(f"follow it with `orchestrator logs {job_id} --address {url}`")
        return 0
    try:
        return ray_cluster.follow(url, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (`orchestrator stop {job_id} --address {url}`)")
        return 130
