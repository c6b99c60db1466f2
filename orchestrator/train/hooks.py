"""The training loop's hook points: where other packages plug into a run without the loop knowing them.

A `LoopHooks` object is built on every rank from the run's config by a factory the command hands the
driver (`train(cfg, hooks=...)`): compression's training-time passes (compress/hooks.py) and a sweep
trial's reports to Ray Tune (sweep/tune_report.py) are two. Every method has a no-op default, so a
hook implements only the points it needs. The loop calls them in this order:

    before_engine(model)                 the plain model, before deepspeed.initialize (module swaps, masks)
    after_step(step, gather)             every optimizer step, on every rank (gather: ZeRO-3 full weights)
    step_metrics() -> dict               merged into each logged step's record
    after_evaluate(step, metrics)        every evaluation, on every rank, with the named metrics
    export_state(state) -> state         rank 0: the final weights before they are saved
    export(module, state, folder, ...)   rank 0: True when the hook wrote the model itself (not save_pretrained)
    summary() -> dict                    rank 0: merged into summary.json
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

Gather = Callable[[list], AbstractContextManager]
"""params -> a context in which they are whole on every rank (DeepSpeed's GatheredParameters under ZeRO-3)."""


class LoopHooks:
    def before_engine(self, model) -> None:
        pass

    def after_step(self, step: int, gather: Gather) -> None:
        pass

    def step_metrics(self) -> dict:
        return {}

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def export_state(self, state: dict) -> dict:
        return state

    def export(self, module, state: dict, folder: Path, val_batches: list, metrics: dict[str, float]) -> bool:
        return False

    def summary(self) -> dict:
        return {}


HookFactory = Callable[[Any], LoopHooks]
"""Builds a rank's hooks from the run's Config; picklable (a class or module-level function), since it travels
to the workers in the payload."""


class Hooks(LoopHooks):
    """Several hooks as one, called in order; `export` is True when any of them wrote the model."""

    def __init__(self, hooks: Sequence[LoopHooks]) -> None:
        self._hooks = list(hooks)

    def before_engine(self, model) -> None:
        for hook in self._hooks:
            hook.before_engine(model)

    def after_step(self, step: int, gather: Gather) -> None:
        for hook in self._hooks:
            hook.after_step(step, gather)

    def step_metrics(self) -> dict:
        return {key: value for hook in self._hooks for key, value in hook.step_metrics().items()}

    def after_evaluate(self, step: int, metrics: dict[str, float]) -> None:
        for hook in self._hooks:
            hook.after_evaluate(step, metrics)

    def export_state(self, state: dict) -> dict:
        for hook in self._hooks:
            state = hook.export_state(state)
        return state

    def export(self, module, state: dict, folder: Path, val_batches: list, metrics: dict[str, float]) -> bool:
        exported = False
        for hook in self._hooks:
            exported = hook.export(module, state, folder, val_batches, metrics) or exported
        return exported

    def summary(self) -> dict:
        return {key: value for hook in self._hooks for key, value in hook.summary().items()}
