#!/usr/bin/env bash
# Submit a training job to Kubernetes (KubeRay operator): launch/k8s/submit.sh [key=value ...]
# It renders runs/<name>/rayjob.yaml and applies it with kubectl when a context is configured.
# Once per namespace: a ReadWriteMany PVC named by cluster.k8s.shared_volume_claim, and (online W&B)
#   kubectl create secret generic wandb --from-literal=api-key="$WANDB_API_KEY"
# Example:
#   launch/k8s/submit.sh model=llama-1b cluster.nodes=2 cluster.gpus_per_node=8 \
#     cluster.k8s.image=registry.example.com/orchestrator:0.1.0 cluster.k8s.namespace=ml
set -euo pipefail
exec orchestrator submit cluster=k8s "$@"
