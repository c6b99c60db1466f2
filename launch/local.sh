#!/usr/bin/env bash
# Train on this machine's embedded Ray cluster: launch/local.sh [key=value ...]
# Example: launch/local.sh model=gpt2-124m zero=3 train.max_steps=200
set -euo pipefail
exec orchestrator train "$@"
