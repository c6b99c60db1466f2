"""The `slurm` backend: an sbatch script that brings up a Ray cluster inside the allocation and
runs the same driver as every other backend against it.

Layout of the job: one Slurm task per node (`srun --overlap`), each running `ray start --block`
(the head on the first node); the driver runs in the batch shell on the first node and waits
for every node to join (cluster.join_timeout_s). Preemption: `--signal=B:USR1@s` reaches the
batch shell, which forwards it to the driver; the driver checkpoints and exits 75, the script
stops Ray and requeues the job, and the requeued job resumes from that checkpoint.
Each job gets its own Ray token (token auth), made at run time and never written to a file.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.config.schema import Config
from orchestrator.errors import ConfigError
from orchestrator.plan import Plan

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
        '"$python" -m orchestrator train --config "$run_dir/job.yaml" &',
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
