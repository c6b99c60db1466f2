"""What the training loop calls, at its hook points, for the training-time passes of `compress`.

The loop knows only these hook points (before_engine, on_step_end, metrics, at_export); which
passes stand behind them is decided here, from the config. With `compress=none` every hook
does nothing.
"""

from __future__ import annotations

from orchestrator.compress.masks import Gather, GradualPruning
from orchestrator.config.schema import Config, PassName


class TrainingHooks:
    def __init__(self, cfg: Config):
        self.name = cfg.compress.name
        self.passes = [GradualPruning(spec, cfg.train.max_steps) for spec in cfg.compress.passes
                       if spec.name is PassName.gradual_magnitude]

    def before_engine(self, model) -> None:
        """On the plain model, before deepspeed.initialize: masks and their forwards."""
        for step in self.passes:
            step.before_engine(model)

    def on_step_end(self, step: int, gather: Gather) -> None:
        """After each optimizer step, on every rank (mask updates gather weights collectively)."""
        for p in self.passes:
            p.on_step_end(step, gather)

    def metrics(self) -> dict:
        """Numbers to log with the step's metrics."""
        return {"sparsity": self.passes[-1].sparsity()} if self.passes else {}

    def at_export(self, state: dict) -> dict:
        """Rank 0, the full state dict before save_pretrained: the compressed model's weights."""
        for p in self.passes:
            state = p.at_export(state)
        return state

    def report(self, state: dict) -> dict | None:
        """The exported model's measured sparsity (prunable weights), for summary.json and model/."""
        if not self.passes:
            return None
        layers = self.passes[-1].layers
        zeros = {name: int((state[f"{name}.weight"] == 0).sum()) for name in layers}
        total = sum(state[f"{name}.weight"].numel() for name in layers)
        return {"pipeline": self.name, "sparsity": sum(zeros.values()) / total,
                "sparsity_per_layer": {name: zeros[name] / state[f"{name}.weight"].numel() for name in layers},
                "schedule": {"start_step": self.passes[-1].spec.start_step, "end_step": self.passes[-1].end,
                             "final_sparsity": self.passes[-1].spec.sparsity,
                             "update_every": self.passes[-1].spec.update_every}}
