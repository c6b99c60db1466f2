"""Distributed large-model training orchestrator: Hydra config -> plan -> Ray Train + DeepSpeed."""

__version__ = "0.1.0"
