#!/usr/bin/env bash
# Submit a training job to a running Ray cluster through its Job Submission API and stream its logs:
#   launch/ray/submit.sh cluster.dashboard_url=http://HEAD:8265 [key=value ...]
# The cluster's nodes need this project installed (docker/Dockerfile builds such an image), and on
# more than one machine run_dir and data.cache_dir must be on storage every node mounts.
# Then: orchestrator status|logs|stop JOB_ID --address http://HEAD:8265
set -euo pipefail
exec orchestrator submit cluster=ray "$@"
