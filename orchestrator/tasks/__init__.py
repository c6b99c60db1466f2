"""Training tasks, one module each, behind train/task.py's protocol. `for_config` picks the one a run uses.

clm.py   causal language modelling: pretraining and continued pretraining on packed token blocks
sft.py   supervised fine-tuning of a pretrained causal LM on chat or prompt/completion samples
classify.py  sequence classification of labelled text with an encoder or decoder and a classification head
distill.py   knowledge distillation: a student trained on a frozen teacher's token distributions
dpo.py       preference tuning (DPO, IPO) on chosen/rejected pairs against a frozen reference
"""

from __future__ import annotations

from orchestrator.config.schema import Config, TaskName
from orchestrator.train.task import Task


def for_config(cfg: Config) -> Task:
    """The task `task.name` names."""
    if cfg.task.name is TaskName.sft:
        from orchestrator.tasks.sft import SupervisedFineTuning

        return SupervisedFineTuning()
    if cfg.task.name is TaskName.classify:
        from orchestrator.tasks.classify import SequenceClassification

        return SequenceClassification()
    if cfg.task.name is TaskName.distill:
        from orchestrator.tasks.distill import Distillation

        return Distillation(cfg)
    if cfg.task.name is TaskName.dpo:
        from orchestrator.tasks.dpo import DirectPreference

        return DirectPreference(cfg)
    from orchestrator.tasks.clm import CausalLM

    return CausalLM()
