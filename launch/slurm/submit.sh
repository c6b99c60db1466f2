#!/usr/bin/env bash
# Submit a training job to Slurm from a login node: launch/slurm/submit.sh [key=value ...]
# It renders <run_dir>/job.sbatch (Ray head + workers over srun, preemption -> checkpoint -> requeue)
# and runs sbatch. Add submit.dry_run=true to print the script without submitting.
# Example:
#   launch/slurm/submit.sh model=llama-1b cluster.nodes=4 cluster.gpus_per_node=8 \
#     cluster.slurm.partition=gpu cluster.slurm.account=myproj cluster.slurm.time=12:00:00 \
#     "cluster.slurm.setup=['source ~/venvs/orchestrator/bin/activate']"
set -euo pipefail
exec orchestrator submit cluster=slurm "$@"
