"""`compress.passes` as pass objects: each refuses what it cannot do before anything runs
(`check`), then does it (`apply`). The checks that need only the config and the model's shape
live in config/compress_checks.py (validation runs them with every other config error); the passes
here subclass them and add `apply` and what needs torch (the CPU int4 kernel probe). Nothing here
imports torch at module level, so the refusals answer as fast as any other config error.

Post-training passes run in `orchestrator compress` (`distill` by launching a training job: recovery.py);
`gradual_magnitude`, `keep_sparsity` and `qat` run inside training (masks.py, qat.py). A pipeline prunes first,
may distill, and quantizes last, at most once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import compress_checks as checks
from orchestrator.config.compress_checks import ModelShape
from orchestrator.config.schema import CompressConfig, Config, PassName, SparsityScore

Calibration = Callable[[int], Iterable]
"""n -> n training-split batches, for passes that look at activations."""


@dataclass(frozen=True)
class Pipeline:
    """What a pass may need beyond the model: calibration batches; for distillation, the run's config, the
    dense model it started from (the teacher) and a folder of its own."""

    calibration: Calibration
    run_config: Config
    dense_model: Path
    workdir: Path


class Pass(checks.PassCheck):
    """One step of a pipeline: its checks (config/compress_checks.py) and what it does to a model."""

    def apply(self, model, pipeline: Pipeline) -> None:
        raise NotImplementedError(f"{self.name} runs during training (orchestrator train compress=...)")


class Magnitude(checks.MagnitudeCheck, Pass):
    def apply(self, model, pipeline):
        from orchestrator.compress import pruning, surgery

        pruning.magnitude(surgery.prunable(model), self.spec.sparsity, self.spec.global_ranking)


class Wanda(checks.WandaCheck, Pass):
    def apply(self, model, pipeline):
        from orchestrator.compress import pruning, surgery

        pruning.wanda(model, surgery.prunable(model), pipeline.calibration(self.spec.calibration_batches),
                      self.spec.sparsity)


class SemiStructured(checks.SemiStructuredCheck, Pass):
    """2:4: half of every 4 consecutive input weights. Zeroed only: CPU has no 2:4 kernels, so it saves
    nothing here; on CUDA GPUs (sm80+) torch's semi-structured sparse tensors can use it."""

    def apply(self, model, pipeline):
        from orchestrator.compress import pruning, surgery

        linears = surgery.prunable(model)
        if self.spec.score is SparsityScore.wanda:
            pruning.wanda(model, linears, pipeline.calibration(self.spec.calibration_batches), 0.5, two_of_four=True)
        else:
            pruning.two_of_four(linears)


class MlpChannels(checks.MlpChannelsCheck, Pass):
    """Structured pruning: unlike zeroed weights, removed channels make the model smaller and faster
    everywhere, CPU included."""

    def apply(self, model, pipeline):
        from orchestrator.compress import pruning

        pruning.mlp_channels(model, self.spec.sparsity)


class Quantize(checks.QuantizeCheck, Pass):
    def check(self, shape):
        problems = super().check(shape)
        if self.spec.name is PassName.int4_weight and not self._group_problems(shape):
            from orchestrator.compress.quantization import int4_cpu_kernel

            if not int4_cpu_kernel():
                problems.append(f"{self.key}=int4_weight: this torch has no CPU int4 kernel "
                                "(aten._weight_int4pack_mm_for_cpu); use int8_weight")
        return problems

    def apply(self, model, pipeline):
        from orchestrator.compress import quantization, surgery

        quantization.quantize(model, surgery.prunable(model, include_head=self.spec.lm_head), self.spec)


class Distill(checks.DistillCheck, Pass):
    """Recovery: the model as it is now (pruned) trains as the student of the dense model, in a distributed
    job on the run's own cluster, data and ZeRO settings (compress/recovery.py); its zeros stay zero."""

    def apply(self, model, pipeline):
        from orchestrator.compress import recovery

        recovery.distill(model, self.spec, pipeline)


class GradualMagnitude(checks.GradualMagnitudeCheck, Pass):
    pass


class KeepSparsity(checks.KeepSparsityCheck, Pass):
    pass


class QuantizationAware(checks.QuantizationAwareCheck, Pass):
    pass


_KINDS: dict[PassName, type[Pass]] = {
    PassName.magnitude: Magnitude,
    PassName.wanda: Wanda,
    PassName.semi_structured: SemiStructured,
    PassName.int8_weight: Quantize,
    PassName.int8_dynamic: Quantize,
    PassName.int4_weight: Quantize,
    PassName.gradual_magnitude: GradualMagnitude,
    PassName.qat: QuantizationAware,
    PassName.mlp_channels: MlpChannels,
    PassName.distill: Distill,
    PassName.keep_sparsity: KeepSparsity,
}


def build(compress: CompressConfig) -> list[Pass]:
    return [_KINDS[spec.name](spec, i) for i, spec in enumerate(compress.passes)]


def pipeline_problems(compress: CompressConfig, shape: ModelShape | None, during_training: bool) -> list[str]:
    """Everything wrong with running this pipeline on this model, one line each, before anything runs:
    config/compress_checks.py's rules, with this torch's int4 kernel probed as well."""
    return checks.pipeline_problems(compress, shape, during_training, _KINDS)
