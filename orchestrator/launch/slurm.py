"""The `slurm` backend: an sbatch script that brings up a Ray cluster inside the allocation and
runs the same driver as every other backend against it.

Layout of the job: one Slurm task per node (`srun --overlap`), each running `ray start --block`
(the head on the first node); the driver runs in the batch shell on the first node and waits
for every node to join (cluster.join_timeout_s). Preemption: `--signal=B:USR1@s` reaches the
batch shell, which forwards it to the driver; the driver checkpoints and exits 75, the script
stops Ray and requeues the job, and the requeued job resumes from that checkpoint.
Each job gets its own Ray token (token auth), made at run time and never written to a file.

Before anything is written, `sbatch --test-only` judges the rendered script (nothing is queued)
and a refusal is reported with Slurm's own reason. After submission, `settle` follows the job
until Slurm has judged it, at most cluster.join_timeout_s, and cancels a job that pends for a
reason waiting cannot fix (HOPELESS), so no job sits in the queue forever.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.config.schema import Config
from orchestrator.errors import ConfigError
from orchestrator.plan.plan import Plan

SCRIPT = "job.sbatch"


def cpus_per_node(cfg: Config, plan: Plan) -> int:
    return cfg.cluster.slurm.cpus_per_task or plan.ranks_per_node * cfg.cluster.cpus_per_worker


def render(cfg: Config, plan: Plan, name: str, run_dir: Path, job_file: Path) -> str:
    """The sbatch script, as text. Every value from the config is shell-quoted."""
    c, s = cfg.cluster, cfg.cluster.slurm
    q = shlex.quote
    cpus = cpus_per_node(cfg, plan)
    directives = [
        f"--job-name={name}",
        f"--nodes={c.nodes}",
        "--ntasks-per-node=1",
        *([f"--gpus-per-node={c.gpus_per_node}"] if c.gpus_per_node else []),
        f"--cpus-per-task={cpus}",
        f"--time={s.time}",
        *[f"--{key}={getattr(s, key)}" for key in ("partition", "account", "qos", "mem", "constraint")
          if getattr(s, key) is not None],
        f"--output={run_dir}/slurm-%j.out",
        "--open-mode=append",
        "--requeue",
        *([f"--signal=B:USR1@{s.preempt_signal_s}"] if s.preempt_signal_s else []),
        *s.extra_directives,
    ]
    python = s.python or sys.executable
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
    if s.setup:  # setup lines may source files that exist only on the cluster
        lines.append("# shellcheck disable=SC1090,SC1091")
    lines += [
        f"# Rendered by `orchestrator submit` for {c.nodes} node(s) x {plan.ranks_per_node} worker(s) "
        f"({'GPU' if c.gpus_per_node else 'CPU'}); world size {plan.world_size}.",
        f"# The job's config: {job_file}. Resubmit with: sbatch {run_dir / SCRIPT}",
        "set -uo pipefail",
        "",
        *([*s.setup, ""] if s.setup else []),
        f"run_dir={q(str(run_dir))}",
        f"python={q(python)}",
        f"port={s.ray_port}",
        'ray_cli=("$python" -m ray.scripts.scripts)',
        'echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"',
        "",
        'mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'head_node="${nodes[0]}"',
        'head_ip=$(srun --nodes=1 --ntasks=1 --overlap -w "$head_node" hostname --ip-address | awk \'{print $1}\')',
        'export RAY_ADDRESS="$head_ip:$port"',
        "# Token auth with a token made for this job; srun hands it to every node in the environment.",
        "export RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN=$(\"$python\" -c 'import secrets; print(secrets.token_hex(32))')",
        "export RAY_AUTH_TOKEN",
        "export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0",
        "",
        "ray_pids=()",
        "stop_ray() {",
        '    if [ "${#ray_pids[@]}" -gt 0 ]; then',
        '        kill "${ray_pids[@]}" 2>/dev/null',
        '        wait "${ray_pids[@]}" 2>/dev/null',
        "        ray_pids=()",
        "    fi",
        "}",
        "trap stop_ray EXIT",
        "",
        "# Ray's own output goes to ray-<job>-<node>.log in the run directory.",
        'srun --nodes=1 --ntasks=1 --overlap -w "$head_node" "${ray_cli[@]}" start --head --block \\',
        '    --node-ip-address="$head_ip" --port="$port" --dashboard-host=127.0.0.1 \\',
        '    --dashboard-port=$((port + 1)) --ray-client-server-port=$((port + 2)) --disable-usage-stats \\',
        f'    --num-cpus={cpus} --num-gpus={c.gpus_per_node} > "$run_dir/ray-$SLURM_JOB_ID-$head_node.log" 2>&1 &',
        'ray_pids+=("$!")',
        'for node in "${nodes[@]:1}"; do',
        '    srun --nodes=1 --ntasks=1 --overlap -w "$node" "${ray_cli[@]}" start --block \\',
        f'        --address="$RAY_ADDRESS" --num-cpus={cpus} --num-gpus={c.gpus_per_node} --disable-usage-stats \\',
        '        > "$run_dir/ray-$SLURM_JOB_ID-$node.log" 2>&1 &',
        '    ray_pids+=("$!")',
        "done",
        "",
        "# The driver waits for every node (cluster.join_timeout_s), trains, and checkpoints on USR1/TERM.",
        f'"$python" -m orchestrator {cfg.command()} --config "$run_dir/job.yaml" &',
        "driver=$!",
        "trap 'kill -USR1 \"$driver\" 2>/dev/null' USR1 TERM  # preemption notice -> checkpoint, exit 75",
        "while :; do",
        '    wait "$driver"',
        "    status=$?",
        '    kill -0 "$driver" 2>/dev/null || break',
        "done",
        "stop_ray",
        'if [ "$status" -eq 75 ]; then',
        '    echo "preempted with a checkpoint: requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def submit(script: Path) -> str:
    """sbatch the script; returns the Slurm job id."""
    if shutil.which("sbatch") is None:
        raise ConfigError([f"cluster=slurm: sbatch is not on PATH; run this on a login node, or submit "
                           f"{script} there with `sbatch {script}` (submit.dry_run=true only renders)"])
    result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ConfigError([f"sbatch {script}: {result.stderr.strip() or result.stdout.strip()}"])
    return result.stdout.strip().split(";")[0]


def request(cfg: Config, plan: Plan) -> str:
    """The key=value pairs that decide what the job asks Slurm for: the start of every refusal."""
    c, s = cfg.cluster, cfg.cluster.slurm
    cpus = (f"cluster.slurm.cpus_per_task={s.cpus_per_task}" if s.cpus_per_task else
            f"cluster.workers_per_node={plan.ranks_per_node} cluster.cpus_per_worker={c.cpus_per_worker}")
    keys = [f"cluster.nodes={c.nodes}", cpus, f"cluster.gpus_per_node={c.gpus_per_node}",
            f"cluster.slurm.time={s.time}",
            *[f"cluster.slurm.{key}={getattr(s, key)}" for key in ("partition", "account", "qos", "mem", "constraint")
              if getattr(s, key) is not None]]
    if s.extra_directives:
        keys.append(f"cluster.slurm.extra_directives=[{','.join(s.extra_directives)}]")
    return " ".join(keys)


def test_only(cfg: Config, plan: Plan, script: str) -> None:
    """`sbatch --test-only` on the script's text (stdin): Slurm judges the request, nothing is queued.

    Runs before any file is written, so a refused job leaves nothing behind. Slurm judges against
    the nodes that are up now: a partition whose every node is down or drained is refused too.
    """
    try:
        result = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ConfigError(["cluster=slurm: sbatch --test-only did not answer within 60 s; check that Slurm "
                           "answers (`sinfo`)"]) from None
    if result.returncode == 0:
        return
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {result.returncode}"
    refused = last.startswith("allocation failure:")
    reason = re.sub(r"^(allocation failure|sbatch: (error|fatal)):\s*", "", last)
    what = (f"sbatch --test-only refused the job ({cfg.cluster.nodes} node(s) x {cpus_per_node(cfg, plan)} CPUs, "
            f"{cfg.cluster.gpus_per_node} GPUs each)" if refused else "sbatch --test-only failed")
    raise ConfigError([f"{request(cfg, plan)}: {what}: {reason}; fit the request to the nodes "
                       f"`sinfo -N -o '%P %N %c %G %m %f'` lists (partition, CPUs, GPUs, memory, features)"])


_PARTITION = "`scontrol show partition{partition}` shows its limits"
_LIMITS = "`sacctmgr show assoc user=$USER` and `sacctmgr show qos` show your accounts, QOS and limits"
# Pending reasons that waiting cannot fix: the job asks for what its partition, account or QOS
# never allows, and would sit in the queue until someone cancelled it. Each maps to (why, where
# to look). Every other reason is ordinary queueing and the job is left to wait: Priority,
# Resources, BeginTime, Dependency, JobHeldUser/JobHeldAdmin, Licenses, Reservation, Prolog,
# Cleaning, PartitionDown/PartitionInactive/NodeDown (an admin brings them back), and the
# Grp*, Per-User and Per-Account limits of a QOS or association (they free up as other jobs end).
HOPELESS = {
    "PartitionConfig": ("the job's size, time, account or QOS is outside what the partition allows", _PARTITION),
    "PartitionNodeLimit": ("cluster.nodes is outside the partition's node limits", _PARTITION),
    "PartitionTimeLimit": ("cluster.slurm.time exceeds the partition's time limit", _PARTITION),
    "BadConstraints": ("no node satisfies the job's constraints",
                       "`sinfo -N -o '%P %N %f'` lists each node's features"),
    "InvalidAccount": ("the account is not valid", _LIMITS),
    "InvalidQOS": ("the QOS is not valid", _LIMITS),
    "AccountNotAllowed": ("the partition does not allow this account", _PARTITION),
    "QOSNotAllowed": ("the partition does not allow this QOS", _PARTITION),
    "DependencyNeverSatisfied": ("a job it depends on can never satisfy the dependency",
                                 "check --dependency in cluster.slurm.extra_directives"),
}
# Per-job and per-node maxima, and minima, of the QOS or association (QOSMaxWallDurationPerJobLimit,
# AssocMaxCpuPerJobLimit, QOSMaxGRESPerNode, QOSMinGRES, ...): the job itself is too big or too small.
_SIZE_LIMIT = re.compile(r"(QOS|Assoc)Max\w*Per(Job|Node)\w*|QOSMin\w*")
UNJUDGED = frozenset({"None", "WaitingForScheduling"})  # the scheduler has not looked at the job yet


def hopeless(reason: str) -> tuple[str, str] | None:
    """(why the job can never start, where to look) for a pending reason code, or None if waiting may help.

    ReqNodeNotAvail is judged by `settle`: hopeless only when a node the job requires does not exist.
    """
    if reason in HOPELESS:
        return HOPELESS[reason]
    if _SIZE_LIMIT.fullmatch(reason):
        return "the job exceeds a per-job or per-node limit of its QOS or account (or is below a minimum)", _LIMITS
    return None


def _job(job_id: str, timeout_s: float) -> dict[str, str] | None:
    """`scontrol show job` as a dict; {} once Slurm has forgotten the job; None if Slurm did not answer."""
    try:
        result = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return {} if "Invalid job id" in result.stderr else None
    info: dict[str, str] = {}
    for item in result.stdout.split():
        key, sep, value = item.partition("=")
        if sep and key not in info:
            info[key] = value
    return info


def _missing_nodes(nodes: str, timeout_s: float) -> list[str]:
    """The nodes of a hostlist (`gpu[01-04]`) that Slurm does not know; [] when it does not answer."""
    try:
        result = subprocess.run(["scontrol", "-o", "show", "node", nodes], capture_output=True, text=True,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return []
    return re.findall(r"Node (\S+) not found", result.stdout + result.stderr)


class Cancelled(ConfigError):
    """The job pended for a reason waiting cannot fix and was cancelled before it ran."""


def settle(cfg: Config, plan: Plan, job_id: str, poll_s: float = 0.5) -> str:
    """Follow a just-submitted job until Slurm has judged it, at most cluster.join_timeout_s.

    Returns what became of it (`running`, `pending: Priority`, ...). A job pending for a hopeless
    reason is cancelled (Cancelled, exit 2, naming Slurm's reason); ConfigError if scancel fails.
    """
    deadline = time.monotonic() + cfg.cluster.join_timeout_s

    def left() -> float:
        return max(1.0, min(30.0, deadline - time.monotonic()))

    while True:
        job = _job(job_id, timeout_s=left())
        if job == {}:
            return "finished"
        state = (job or {}).get("JobState", "")
        reason = (job or {}).get("Reason", "None").replace("_", " ")  # scontrol writes spaces as underscores
        code = reason.split(",")[0]
        if job and state != "PENDING":
            return state.lower()
        if job and code not in UNJUDGED:
            verdict = hopeless(code)
            if code == "ReqNodeNotAvail" and job.get("ReqNodeList", "(null)") != "(null)":
                missing = _missing_nodes(job["ReqNodeList"], timeout_s=left())
                if missing:
                    verdict = (f"it requires node(s) {','.join(missing)}, which do not exist",
                               "`sinfo -N` lists the nodes")
            if verdict is None:
                return f"pending: {reason}"
            _cancel(cfg, plan, job_id, reason, *verdict)
        if time.monotonic() + poll_s > deadline:
            limit = f"cluster.join_timeout_s={cfg.cluster.join_timeout_s}"
            return (f"pending: {reason}, not judged by Slurm within {limit}" if job else
                    f"state unknown: `scontrol show job {job_id}` did not answer within {limit}")
        time.sleep(poll_s)


def _cancel(cfg: Config, plan: Plan, job_id: str, reason: str, why: str, look: str) -> None:
    try:
        result = subprocess.run(["scancel", job_id], capture_output=True, text=True, timeout=60)
        failed = result.stderr.strip() or f"exit code {result.returncode}" if result.returncode else ""
    except subprocess.TimeoutExpired:
        failed = "no answer within 60 s"
    partition = cfg.cluster.slurm.partition
    look = look.format(partition=f" {partition}" if partition else "")
    outcome = f"`scancel {job_id}` failed ({failed}): cancel it yourself" if failed else "it was cancelled"
    problem = (f"{request(cfg, plan)}: Slurm job {job_id} pends for {reason} ({why}), which waiting cannot fix, "
               f"so {outcome}; change the request to fit ({look})")
    raise (ConfigError if failed else Cancelled)([problem])
