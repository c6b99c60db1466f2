#!/usr/bin/env bash
# Build the worker image from the repository root.
#   docker/build.sh [TAG] [TORCH_CUDA_ARCH_LIST]
#   docker/build.sh myregistry/orchestrator:0.1.0 "9.0"     # H100 only: a faster build
set -euo pipefail
tag="${1:-orchestrator:latest}"
arch_list="${2:-8.0;8.6;9.0}"
cd "$(dirname "$0")/.."
docker build --file docker/Dockerfile --build-arg "TORCH_CUDA_ARCH_LIST=${arch_list}" --tag "${tag}" .
echo "built ${tag} (CUDA archs ${arch_list})"
