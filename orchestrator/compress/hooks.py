"""What the training loop calls, at its hook points, for the training-time passes of `compress`.

The loop knows only these hook points (before_engine, on_step_end, metrics, export); which
passes stand behind them is decided here, from the config. With `compress=none` every hook
does nothing and export is plain `save_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.compress.masks import Gather, GradualPruning
from orchestrator.config.schema import Config, PassName
from orchestrator.rundir import COMPRESS_REPORT


class TrainingHooks:
    def __init__(self, cfg: Config):
        from orchestrator.compress.qat import QuantizationAwareTraining

        self.name = cfg.compress.name
        specs = cfg.compress.passes
        self.pruning = [GradualPruning(s, cfg.train.max_steps) for s in specs if s.name is PassName.gradual_magnitude]
        self.qat = [QuantizationAwareTraining(s) for s in specs if s.name is PassName.qat]

    def before_engine(self, model) -> None:
        """On the plain model, before deepspeed.initialize: module swaps, masks and their forwards."""
        for p in [*self.pruning, *self.qat]:
            p.before_engine(model)

    def on_step_end(self, step: int, gather: Gather) -> None:
        """After each optimizer step, on every rank (mask updates gather weights collectively)."""
        for p in self.pruning:
            p.on_step_end(step, gather)

    def metrics(self) -> dict:
        """Numbers to log with the step's metrics."""
        return {"sparsity": self.pruning[-1].sparsity()} if self.pruning else {}

    def export(self, module, state: dict, folder: Path, val_batches: list, val_loss: float) -> dict | None:
        """Rank 0: write the final model into `folder` from the full state dict; returns the compression
        report (also written to folder/compress_report.json), or None without compression."""
        for p in self.pruning:
            state = p.at_export(state)
        report = self._sparsity(state) if self.pruning else {}
        if self.qat:
            report.update(self.qat[-1].export(state, folder, val_batches, val_loss))
        else:
            module.save_pretrained(str(folder), state_dict=state)
        if not (self.pruning or self.qat):
            return None
        report = {"pipeline": self.name, **report}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / COMPRESS_REPORT).write_text(json.dumps(report, indent=2))
        return report

    def _sparsity(self, state: dict) -> dict:
        """The exported weights' measured sparsity (prunable layers), with the schedule that made it."""
        p = self.pruning[-1]
        zeros = {name: int((state[f"{name}.weight"] == 0).sum()) for name in p.layers}
        sizes = {name: state[f"{name}.weight"].numel() for name in p.layers}
        return {"sparsity": sum(zeros.values()) / sum(sizes.values()),
                "sparsity_per_layer": {name: zeros[name] / sizes[name] for name in p.layers},
                "schedule": {"start_step": p.start, "end_step": p.end, "final_sparsity": p.spec.sparsity,
                             "update_every": p.spec.update_every}}
