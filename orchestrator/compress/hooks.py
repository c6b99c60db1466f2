"""Compression's training-time passes (`compress=gradual50`, `compress=qat_int8`, `keep_sparsity`, ...) at the training
loop's hook points (train/hooks.py): which passes stand behind them is decided here, from the config.
With `compress=none` every hook does nothing and the task exports the model as usual.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.config.schema import Config, PassName
from orchestrator.rundir import COMPRESS_REPORT
from orchestrator.train.hooks import Gather, LoopHooks


class TrainingHooks(LoopHooks):
    def __init__(self, cfg: Config):
        # Imported here: the driver passes this class to every run, and only the workers, which build it, need torch.
        from orchestrator.compress.masks import GradualPruning, KeptSparsity
        from orchestrator.compress.qat import QuantizationAwareTraining

        self.name = cfg.compress.name
        specs = cfg.compress.passes
        self.pruning = [GradualPruning(s, cfg.train.max_steps) if s.name is PassName.gradual_magnitude
                        else KeptSparsity(s) for s in specs
                        if s.name in (PassName.gradual_magnitude, PassName.keep_sparsity)]
        self.qat = [QuantizationAwareTraining(s) for s in specs if s.name is PassName.qat]
        self._report: dict | None = None

    def before_engine(self, model) -> None:
        """On the plain model, before deepspeed.initialize: module swaps, masks and their forwards."""
        for p in [*self.pruning, *self.qat]:
            p.before_engine(model)

    def after_step(self, step: int, gather: Gather) -> None:
        """After each optimizer step, on every rank (mask updates gather weights collectively)."""
        for p in self.pruning:
            p.on_step_end(step, gather)

    def step_metrics(self) -> dict:
        """Numbers to log with the step's metrics."""
        return {"sparsity": self.pruning[-1].sparsity()} if self.pruning else {}

    def export_state(self, state: dict) -> dict:
        """Rank 0: the masks applied to the final weights for good."""
        for p in self.pruning:
            state = p.at_export(state)
        return state

    def export(self, module, state: dict, folder: Path, val_batches: list, metrics: dict[str, float]) -> bool:
        """Rank 0: the compression report (folder/compress_report.json, and summary.json's `compress`); with QAT
        the model is written here, quantized, instead of by the task."""
        if not (self.pruning or self.qat):
            return False
        report = self._sparsity(state) if self.pruning else {}
        if self.qat:
            report.update(self.qat[-1].export(state, folder, val_batches, metrics["val_loss"]))
        self._report = {"pipeline": self.name, **report}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / COMPRESS_REPORT).write_text(json.dumps(self._report, indent=2))
        return bool(self.qat)

    def summary(self) -> dict:
        if self._report is None:
            return {}
        return {"compress": {self.name: {k: v for k, v in self._report.items() if isinstance(v, (int, float))}}}

    def _sparsity(self, state: dict) -> dict:
        """The exported weights' measured sparsity (prunable layers), with the schedule that made it."""
        p = self.pruning[-1]
        zeros = {name: int((state[f"{name}.weight"] == 0).sum()) for name in p.layers}
        sizes = {name: state[f"{name}.weight"].numel() for name in p.layers}
        return {"sparsity": sum(zeros.values()) / sum(sizes.values()),
                "sparsity_per_layer": {name: zeros[name] / sizes[name] for name in p.layers}, **p.describe()}
