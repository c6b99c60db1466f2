"""Training tasks, one module each, behind train/task.py's protocol. `for_config` picks the one a run uses.

clm.py   causal language modelling: pretraining and continued pretraining on packed token blocks
"""

from __future__ import annotations

from orchestrator.config.schema import Config
from orchestrator.train.task import Task


def for_config(cfg: Config) -> Task:
    """The task the config asks for; today every run trains a causal LM."""
    from orchestrator.tasks.clm import CausalLM

    return CausalLM()
