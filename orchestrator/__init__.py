"""Distributed large-model training orchestrator: Hydra config -> plan -> Ray Train + DeepSpeed."""

from orchestrator import library_logs

__version__ = "0.1.0"
library_logs.install()
