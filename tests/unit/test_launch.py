"""`orchestrator submit` dry runs: the sbatch script and the RayJob manifest, as users receive them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.unit

SENTINEL = "sentinel"  # the issue's literal value; 8 characters, so redaction would also catch it


def submit(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`orchestrator submit ARGS` through the CLI's entry point, in this process (a unit test starts no
    interpreter): its exit code and what it printed."""
    import contextlib
    import io
    import os
    from unittest import mock

    from orchestrator import cli

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env_extra or {}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = cli.main(["submit", *args])
    return subprocess.CompletedProcess(["orchestrator", "submit", *args], code, out.getvalue(), err.getvalue())


def test_slurm_dry_run_prints_a_shellchecked_script_for_4_nodes_of_8_gpus(tmp_path):
    run_dir = tmp_path / "run"
    result = submit("cluster=slurm", "cluster.nodes=4", "cluster.gpus_per_node=8", "submit.dry_run=true",
                    "cluster.slurm.partition=gpu", "cluster.slurm.account=proj1", "cluster.slurm.qos=high",
                    "cluster.slurm.mem=0", "cluster.slurm.constraint=h100",
                    "cluster.slurm.extra_directives=[--exclusive]",
                    "cluster.slurm.setup=['module load cuda/12.8','source ~/venv/bin/activate']",
                    f"run_dir={run_dir}", env_extra={"WANDB_API_KEY": SENTINEL})
    assert result.returncode == 0, result.stderr
    script = (run_dir / "job.sbatch").read_text()
    assert script in result.stdout  # printed as written
    for directive in ("--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=1", "--cpus-per-task=64",
                      "--partition=gpu", "--account=proj1", "--qos=high", "--mem=0", "--constraint=h100",
                      "--exclusive", "--requeue", "--signal=B:USR1@120", "--time=04:00:00"):
        assert f"#SBATCH {directive}\n" in script
    assert "module load cuda/12.8\nsource ~/venv/bin/activate\n" in script
    assert "world size 32" in script and "--num-gpus=8" in script
    checked = subprocess.run([shutil.which("shellcheck") or "shellcheck", "--severity=style", "-"], input=script,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    assert SENTINEL not in script and SENTINEL not in (run_dir / "job.yaml").read_text()
    assert not list(run_dir.glob("slurm-*"))  # nothing was submitted


def _manifest(tmp_path, *overrides: str) -> tuple[dict, dict, str]:
    result = submit("cluster=k8s", "submit.dry_run=true", *overrides, env_extra={"WANDB_API_KEY": SENTINEL})
    assert result.returncode == 0, result.stderr
    path = next(tmp_path.glob("runs/*/rayjob.yaml"))
    text = path.read_text()
    config_map, ray_job = yaml.safe_load_all(text)
    assert f"kubectl apply -f {path}" in result.stdout
    return config_map, ray_job, text


def test_k8s_dry_run_writes_a_rayjob_with_the_fields_kuberay_reads(tmp_path):
    config_map, job, text = _manifest(tmp_path, "cluster.nodes=3", "cluster.gpus_per_node=4",
                                      "cluster.k8s.image=registry.example/orchestrator:0.1")
    assert SENTINEL not in text
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= {"entrypoint", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "backoffLimit",
                         "submissionMode", "rayClusterSpec", "runtimeEnvYAML", "activeDeadlineSeconds"}
    assert spec["entrypoint"] == "python -m orchestrator train --config /etc/orchestrator/job.yaml"
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3
    worker = workers["template"]["spec"]
    (container,) = worker["containers"]
    assert container["image"] == "registry.example/orchestrator:0.1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    for pod in (head, worker):
        (key,) = [e for e in pod["containers"][0]["env"] if e["name"] == "WANDB_API_KEY"]
        assert "value" not in key and key["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key",
                                                                           "optional": True}
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["orchestrator-shared"]
        assert {"name": "shared", "mountPath": "/mnt/shared"} in pod["containers"][0]["volumeMounts"]
    assert {"name": "job", "configMap": {"name": config_map["metadata"]["name"]}} in head["volumes"]
    job_file = yaml.safe_load(config_map["data"]["job.yaml"])
    assert job_file["cluster"]["name"] == "k8s"
    assert job_file["run_dir"] == f"/mnt/shared/runs/{job['metadata']['name']}"
    assert job_file["data"]["cache_dir"] == "/mnt/shared/cache"


def test_the_job_file_keeps_interpolations_for_the_cluster_to_resolve(tmp_path):
    submit("cluster=slurm", "submit.dry_run=true", f"run_dir={tmp_path / 'run'}")
    job_file = yaml.safe_load((tmp_path / "run" / "job.yaml").read_text())
    assert job_file["data"]["cache_dir"].startswith("${oc.env:ORCHESTRATOR_CACHE")


@pytest.mark.parametrize(("overrides", "message"), [
    (["cluster=local"], "cluster=local: `orchestrator submit` sends jobs to cluster=ray, slurm or k8s"),
    (["cluster=slurm", "cluster.slurm.time=soon"], "cluster.slurm.time=soon: must be a Slurm time limit"),
    (["cluster=slurm", "cluster.slurm.preempt_signal_s=7200", "cluster.slurm.time=60"],
     "cluster.slurm.preempt_signal_s=7200: must be >= 0 and shorter than cluster.slurm.time"),
    (["cluster=slurm", "cluster.slurm.account='$(rm)'"], "cluster.slurm.account=$(rm): must be one word"),
    (["cluster=slurm", "cluster.slurm.account=$(rm)"], "cluster.slurm.account=$(rm): cannot parse the value"),
    (["cluster=slurm", "cluster.workers_per_node=3"], "cluster.workers_per_node=3: must equal"),
    (["cluster=k8s", "cluster.k8s.namespace=Team_A"], "cluster.k8s.namespace=Team_A: must be a Kubernetes name"),
    (["cluster=ray", "cluster.gpus_per_worker=null"], "cluster.gpus_per_worker=null: cluster=ray needs a number"),
    (["cluster=ray", "cluster.dashboard_url=head:8265"], "cluster.dashboard_url=head:8265: must be an http(s)"),
    (["cluster=nowhere"], "cluster=nowhere: no such option"),
])
def test_bad_submit_input_exits_2_with_one_line_and_writes_nothing(tmp_path, overrides, message):
    result = submit(*overrides, "submit.dry_run=true", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_config_file_fixes_the_groups_and_takes_key_overrides(tmp_path):
    submit("cluster=slurm", "submit.dry_run=true", f"run_dir={tmp_path / 'run'}")
    job_file = str(tmp_path / "run" / "job.yaml")
    plan = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "--config", job_file, "cluster.nodes=2",
                           "plan.format=json"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert '"world_size": 16' in plan.stdout
    refused = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "--config", job_file, "zero=3"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "config groups are fixed by --config" in refused.stderr


def _fake_kubectl(tmp_path, context: str) -> dict:
    """A kubectl on PATH that answers `config current-context` and records `apply`."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f"""#!/usr/bin/env bash
echo "$@" >> {tmp_path}/kubectl.calls
if [ "$1 $2" = "config current-context" ]; then
    [ -n "{context}" ] && echo "{context}" && exit 0
    echo "error: current-context is not set" >&2; exit 1
fi
echo "rayjob.ray.io/x created"
""")
    kubectl.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_k8s_submit_applies_with_kubectl_when_a_context_is_configured(tmp_path):
    result = submit("cluster=k8s", env_extra=_fake_kubectl(tmp_path, "prod"))
    assert result.returncode == 0, result.stderr
    manifest = next(tmp_path.glob("runs/*/rayjob.yaml"))
    assert f"apply -f {manifest}" in (tmp_path / "kubectl.calls").read_text()
    assert "to context prod" in result.stdout


def test_k8s_submit_without_a_context_prints_the_command(tmp_path):
    result = submit("cluster=k8s", env_extra=_fake_kubectl(tmp_path, ""))
    assert result.returncode == 0, result.stderr
    manifest = next(tmp_path.glob("runs/*/rayjob.yaml"))
    assert f"no kubectl context configured: wrote {manifest}; apply it with `kubectl apply -f {manifest}`" \
        in result.stdout
    assert "apply" not in (tmp_path / "kubectl.calls").read_text()


def test_joining_waits_for_the_head_then_fails_within_the_bound():
    import socket
    import time

    from orchestrator.errors import TrainingError
    from orchestrator.launch.ray_cluster import wait_for_head

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        wait_for_head(f"127.0.0.1:{port}", timeout_s=5)  # answers: returns at once
    started = time.monotonic()
    with pytest.raises(TrainingError, match=f"no Ray head answers at 127.0.0.1:{port} within"):
        wait_for_head(f"127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - started < 10


def test_an_unreachable_ray_cluster_is_one_line_and_nothing_is_written(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    result = submit("cluster=ray", f"cluster.dashboard_url=http://127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach Ray's Job Submission API at http://127.0.0.1:{port} (Failed to connect to Ray at "
        f"address: http://127.0.0.1:{port}.); pass --address or set cluster.dashboard_url"]
    assert not (tmp_path / "runs").exists()


def test_k8s_refuses_folders_off_the_shared_volume_and_writes_nothing(tmp_path):
    mount = "cluster.k8s.mount_path=/mnt/shared"
    result = submit("cluster=k8s", "run_dir=/tmp/x", "data.cache_dir=/mnt/shared/../elsewhere", mount,
                    "submit.dry_run=true")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: run_dir=/tmp/x: not on the shared volume (cluster.k8s.mount_path=/mnt/shared), so the pods would "
        "not share it and it would vanish with them; leave run_dir unset (default /mnt/shared/runs/<name>) or pick "
        "a folder under /mnt/shared",
        "error: data.cache_dir=/mnt/shared/../elsewhere: not on the shared volume (cluster.k8s.mount_path="
        "/mnt/shared), so the pods would not share it and it would vanish with them; leave data.cache_dir unset "
        "(default /mnt/shared/cache) or pick a folder under /mnt/shared"]
    assert not (tmp_path / "runs").exists() and not list(tmp_path.iterdir())
    assert submit("cluster=k8s", "run_dir=/mnt/shared/team/run1", "data.cache_dir=/mnt/shared/c",
                  "submit.dry_run=true").returncode == 0


@pytest.mark.parametrize("reason", [
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount", "InvalidQOS",
    "AccountNotAllowed", "QOSNotAllowed", "DependencyNeverSatisfied", "QOSMaxWallDurationPerJobLimit",
    "QOSMaxCpuMinutesPerJobLimit", "AssocMaxCpuPerJobLimit", "AssocMaxNodePerJobLimit", "QOSMaxGRESPerJob",
    "QOSMaxGRESPerNode", "QOSMaxMemoryPerNode", "QOSMinGRES", "QOSMinCpuNotSatisfied",
])
def test_pending_reasons_that_waiting_cannot_fix(reason):
    from orchestrator.launch.slurm import hopeless

    assert hopeless(reason) is not None


@pytest.mark.parametrize("reason", [
    "Priority", "Resources", "BeginTime", "Dependency", "JobHeldUser", "JobHeldAdmin", "Licenses", "Reservation",
    "Prolog", "Cleaning", "PartitionDown", "PartitionInactive", "NodeDown", "ReqNodeNotAvail", "QOSGrpGRES",
    "QOSGrpCpuLimit", "AssocGrpCpuLimit", "AssocMaxJobsLimit", "QOSMaxJobsPerUserLimit",
    "QOSMaxSubmitJobPerUserLimit", "QOSMaxCpuPerUserLimit", "MaxCpuPerAccount", "QOSJobLimit", "None",
])
def test_pending_reasons_that_clear_by_waiting(reason):
    from orchestrator.launch.slurm import hopeless

    assert hopeless(reason) is None


def _fake_slurm(tmp_path, jobs: list[str], refuse: str = "") -> dict:
    """sbatch, scontrol and scancel on PATH, calls recorded in slurm.calls. `sbatch --test-only` refuses with
    `refuse` when given; the submitted job is 42, and `scontrol show job` answers each of `jobs` in turn
    (`JobState=... Reason=...`), the last one from then on. No node exists."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "jobs").write_text("".join(f"{job}\n" for job in jobs))
    fakes = {
        "sbatch": f"""if [ "$1" = --test-only ]; then
    cat > {tmp_path}/tested.sbatch
    [ -n "{refuse}" ] && echo "allocation failure: {refuse}" >&2 && exit 1
    echo "sbatch: Job 42 to start at 2030-01-01T00:00:00 using 2 processors on nodes n1 in partition debug" >&2
    exit 0
fi
echo 42""",
        "scontrol": f"""if [ "$3" = node ]; then echo "Node $4 not found" >&2; exit 1; fi
echo "JobId=42 JobName=tiny $(head -n 1 {tmp_path}/jobs)"
[ "$(wc -l < {tmp_path}/jobs)" -gt 1 ] && sed -i 1d {tmp_path}/jobs
exit 0""",
        "scancel": "exit 0",
    }
    for name, body in fakes.items():
        path = bin_dir / name
        path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> {tmp_path}/slurm.calls\n{body}\n')
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


SLURM_CPU = ("cluster=slurm", "cluster.gpus_per_node=0", "cluster.workers_per_node=2")


def test_slurm_refused_by_test_only_is_one_line_and_nothing_is_written_or_queued(tmp_path):
    env = _fake_slurm(tmp_path, [], refuse="Requested node configuration is not available")
    result = submit(*SLURM_CPU, f"run_dir={tmp_path / 'run'}", env_extra=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: cluster.nodes=1 cluster.workers_per_node=2 cluster.cpus_per_worker=8 cluster.gpus_per_node=0 "
        "cluster.slurm.time=04:00:00: sbatch --test-only refused the job (1 node(s) x 16 CPUs, 0 GPUs each): "
        "Requested node configuration is not available; fit the request to the nodes "
        "`sinfo -N -o '%P %N %c %G %m %f'` lists (partition, CPUs, GPUs, memory, features)"]
    assert (tmp_path / "slurm.calls").read_text() == "sbatch --test-only\n"  # judged on stdin, never queued
    assert "#SBATCH --cpus-per-task=16\n" in (tmp_path / "tested.sbatch").read_text()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("jobs", "problem"), [
    (["JobState=PENDING Reason=None", "JobState=PENDING Reason=PartitionTimeLimit"],
     "Slurm job 42 pends for PartitionTimeLimit (cluster.slurm.time exceeds the partition's time limit), which "
     "waiting cannot fix, so it was cancelled; change the request to fit (`scontrol show partition short` shows "
     "its limits)"),
    (["JobState=PENDING Reason=ReqNodeNotAvail,_May_be_reserved_for_other_job ReqNodeList=ghost"],
     "Slurm job 42 pends for ReqNodeNotAvail, May be reserved for other job (it requires node(s) ghost, which do "
     "not exist), which waiting cannot fix, so it was cancelled"),
])
def test_slurm_job_pending_for_a_hopeless_reason_is_cancelled_and_refused(tmp_path, jobs, problem):
    env = _fake_slurm(tmp_path, jobs)
    result = submit(*SLURM_CPU, "cluster.cpus_per_worker=1", "cluster.slurm.partition=short", env_extra=env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: cluster.nodes=1 cluster.workers_per_node=2 cluster.cpus_per_worker=1 ") and \
        problem in line
    assert (tmp_path / "slurm.calls").read_text().splitlines()[-1] == "scancel 42"
    assert not (tmp_path / "runs").exists()  # it never ran: nothing is left, and a run_dir can take the fixed job


@pytest.mark.parametrize(("jobs", "status"), [
    (["JobState=PENDING Reason=None", "JobState=PENDING Reason=Priority"], "pending: Priority"),
    (["JobState=PENDING Reason=ReqNodeNotAvail,_UnavailableNodes:n1 ReqNodeList=(null)"],
     "pending: ReqNodeNotAvail, UnavailableNodes:n1"),
    (["JobState=PENDING Reason=None", "JobState=RUNNING Reason=None"], "running"),
])
def test_slurm_job_that_runs_or_queues_normally_is_left_alone(tmp_path, jobs, status):
    run_dir = tmp_path / "run"
    result = submit(*SLURM_CPU, "cluster.cpus_per_worker=1", f"run_dir={run_dir}",
                    env_extra=_fake_slurm(tmp_path, jobs))
    assert result.returncode == 0, result.stderr
    assert f"submitted Slurm job 42 ({status}); run directory: {run_dir}" in result.stdout
    assert "scancel" not in (tmp_path / "slurm.calls").read_text()
    assert (run_dir / "job.sbatch").exists() and (run_dir / "job.yaml").exists()


def test_slurm_waits_for_a_verdict_no_longer_than_join_timeout(tmp_path):
    import time

    started = time.monotonic()
    result = submit(*SLURM_CPU, "cluster.cpus_per_worker=1", "cluster.join_timeout_s=2",
                    env_extra=_fake_slurm(tmp_path, ["JobState=PENDING Reason=None"]))
    assert result.returncode == 0, result.stderr
    assert "(pending: None, not judged by Slurm within cluster.join_timeout_s=2)" in result.stdout
    assert time.monotonic() - started < 15
    assert "scancel" not in (tmp_path / "slurm.calls").read_text()


@pytest.mark.parametrize("backend", ["slurm", "k8s"])
def test_a_config_with_a_search_space_is_submitted_as_a_sweep(tmp_path, backend):
    """The sweep's driver runs on the cluster from the job file; sweep.dir takes run_dir's place."""
    folder = tmp_path / "sweep"
    extra = ([f"sweep.dir={folder}", "cluster.gpus_per_node=0", "cluster.workers_per_node=2"] if backend == "slurm"
             else ["cluster.nodes=2", "cluster.gpus_per_node=8"])
    result = submit(f"cluster={backend}", "submit.dry_run=true", "optim.lr=1e-3,3e-3", "zero=2,3", *extra)
    assert result.returncode == 0, result.stderr
    folder = folder if backend == "slurm" else next(tmp_path.glob("runs/*"))
    job = yaml.safe_load((folder / "job.yaml").read_text()) if backend == "slurm" else \
        yaml.safe_load(next(yaml.safe_load_all((folder / "rayjob.yaml").read_text()))["data"]["job.yaml"])
    assert job["sweep"]["params"] == {"optim.lr": "1e-3,3e-3", "zero": "2,3"}
    assert job["run_dir"] is None and job["sweep"]["dir"]
    artifact = (folder / ("job.sbatch" if backend == "slurm" else "rayjob.yaml")).read_text()
    assert "-m orchestrator sweep --config" in artifact and "orchestrator train" not in artifact


def test_a_bad_search_space_is_refused_before_anything_is_submitted(tmp_path):
    result = submit("cluster=slurm", "submit.dry_run=true", "optim.lr=interval(1e-4,1e-2)",
                    f"sweep.dir={tmp_path / 's'}")
    assert result.returncode == 2
    assert "a grid needs listed values" in result.stderr
    assert not (tmp_path / "s").exists()
