"""What is wrong with a `compress.passes` pipeline, known from the config and the model's shape alone:
the refusals validation reports with every other config error, before anything runs.

Pure: no torch, nothing from compress/. The passes themselves (compress/passes.py) subclass these
checks and add what needs torch: `apply`, and the probe for a CPU int4 kernel. Validation
(config/validate.py) checks a training pipeline with the checks here; `orchestrator compress`
checks its post-training pipeline with compress/passes.py's `pipeline_problems`, the same rules.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.schema import Arch, CompressConfig, ModelConfig, PassConfig, PassName, SparsityScore

QUANTIZERS = (PassName.int8_weight, PassName.int8_dynamic, PassName.int4_weight)
INT4_GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class ModelShape:
    """What the checks need to know about a model, without building it."""

    arch: str
    hidden_size: int
    intermediate_size: int
    tied_head: bool

    @property
    def in_features(self) -> set[int]:
        """Input widths of the prunable linear layers (attention, MLP up, MLP down)."""
        return {self.hidden_size, self.intermediate_size}

    @classmethod
    def of_config(cls, model: ModelConfig) -> ModelShape | None:
        if model.pretrained_path:
            return cls.of_folder(Path(model.pretrained_path).expanduser())
        return cls(model.arch.value, model.hidden_size, model.intermediate_size or 4 * model.hidden_size,
                   model.tie_word_embeddings)

    @classmethod
    def of_folder(cls, folder: Path) -> ModelShape | None:
        """From a saved model's config.json (None when it cannot be read; the load then reports it)."""
        try:
            hf = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if hf.get("model_type") == Arch.gpt2.value:
            hidden = hf["n_embd"]
            return cls("gpt2", hidden, hf.get("n_inner") or 4 * hidden, hf.get("tie_word_embeddings", True))
        return cls(hf.get("model_type", "llama"), hf["hidden_size"], hf["intermediate_size"],
                   hf.get("tie_word_embeddings", False))


def kept_channels(width: int, share: float) -> int:
    """MLP channels kept when `share` of `width` go: rounded down to a multiple of 32 (at least 32), so
    int4 groups of 32 and 2:4 blocks still fit the narrower layers."""
    return max(32, int(width * (1.0 - share)) // 32 * 32)


class PassCheck:
    """One step of a pipeline, as far as checking it goes. `key` names it in errors (compress.passes[i]=name)."""

    during_training = False

    def __init__(self, spec: PassConfig, index: int):
        self.spec = spec
        self.key = f"compress.passes[{index}]"

    @property
    def name(self) -> str:
        return self.spec.name.value

    def check(self, shape: ModelShape | None) -> list[str]:
        return []

    def reshape(self, shape: ModelShape | None) -> ModelShape | None:
        """The model's shape after this pass (the next pass is checked against it)."""
        return shape

    def _sparsity_problem(self) -> list[str]:
        s = self.spec.sparsity
        return [] if 0.0 < s < 1.0 else [f"{self.key}.sparsity={s}: must be in (0, 1)"]


class MagnitudeCheck(PassCheck):
    def check(self, shape):
        return self._sparsity_problem()


class WandaCheck(PassCheck):
    def check(self, shape):
        problems = self._sparsity_problem()
        if self.spec.calibration_batches < 1:
            problems.append(f"{self.key}.calibration_batches={self.spec.calibration_batches}: must be >= 1")
        return problems


class SemiStructuredCheck(PassCheck):
    def check(self, shape):
        problems = []
        if shape and any(n % 4 for n in shape.in_features):
            problems.append(f"{self.key}={self.name}: 2:4 needs input widths divisible by 4, the model has "
                            f"{sorted(shape.in_features)}")
        if self.spec.score is SparsityScore.wanda and self.spec.calibration_batches < 1:
            problems.append(f"{self.key}.calibration_batches={self.spec.calibration_batches}: must be >= 1")
        return problems


class MlpChannelsCheck(PassCheck):
    def check(self, shape):
        problems = self._sparsity_problem()
        if not problems and shape and shape.intermediate_size < 64:
            problems.append(f"{self.key}={self.name}: the MLP is {shape.intermediate_size} channels wide; "
                            "it needs at least 64 to keep 32")
        return problems

    def reshape(self, shape):
        return shape and dataclasses.replace(
            shape, intermediate_size=kept_channels(shape.intermediate_size, self.spec.sparsity))


class QuantizeCheck(PassCheck):
    def check(self, shape):
        problems = []
        if self.spec.lm_head and shape and shape.tied_head:
            problems.append(f"{self.key}.lm_head=true: the output head is tied to the input embedding; quantizing it "
                            "would untie it and grow the model (train with model.tie_word_embeddings=false)")
        if self.spec.name is PassName.int4_weight:
            problems += self._group_problems(shape)
        return problems

    def _group_problems(self, shape: ModelShape | None) -> list[str]:
        """int4_weight: the group size is one torchao packs and divides every layer's input width."""
        g = self.spec.group_size
        if g not in INT4_GROUP_SIZES:
            return [f"{self.key}.group_size={g}: must be one of {', '.join(map(str, INT4_GROUP_SIZES))}"]
        if shape and any(n % g for n in shape.in_features):
            return [f"{self.key}.group_size={g}: must divide every layer's input width "
                    f"{sorted(shape.in_features)}; try {_largest_divisor(shape.in_features)}"]
        return []


class GradualMagnitudeCheck(PassCheck):
    during_training = True

    def check(self, shape):
        problems = self._sparsity_problem()
        s = self.spec
        if s.start_step is not None and s.start_step < 0:
            problems.append(f"{self.key}.start_step={s.start_step}: must be >= 0")
        if s.end_step is not None and s.start_step is not None and s.end_step <= s.start_step:
            problems.append(f"{self.key}.end_step={s.end_step}: must be after start_step={s.start_step}")
        if s.update_every < 1:
            problems.append(f"{self.key}.update_every={s.update_every}: must be >= 1")
        return problems


class QuantizationAwareCheck(PassCheck):
    during_training = True

    def check(self, shape):
        s = self.spec
        if s.bits not in (4, 8):
            return [f"{self.key}.bits={s.bits}: must be 8 or 4"]
        if s.bits == 4:
            if s.group_size not in INT4_GROUP_SIZES:
                return [f"{self.key}.group_size={s.group_size}: must be one of {', '.join(map(str, INT4_GROUP_SIZES))}"]
            if shape and any(n % s.group_size for n in shape.in_features):
                return [f"{self.key}.group_size={s.group_size}: must divide every layer's input width "
                        f"{sorted(shape.in_features)}; try {_largest_divisor(shape.in_features)}"]
        return []


class DistillCheck(PassCheck):
    def check(self, shape):
        s, problems = self.spec, []
        if s.steps < 1:
            problems.append(f"{self.key}.steps={s.steps}: must be >= 1")
        if s.lr is not None and not s.lr > 0:
            problems.append(f"{self.key}.lr={s.lr}: must be > 0, or null for a tenth of the run's optim.lr")
        return problems


class KeepSparsityCheck(PassCheck):
    during_training = True


CHECKS: dict[PassName, type[PassCheck]] = {
    PassName.magnitude: MagnitudeCheck,
    PassName.wanda: WandaCheck,
    PassName.semi_structured: SemiStructuredCheck,
    PassName.int8_weight: QuantizeCheck,
    PassName.int8_dynamic: QuantizeCheck,
    PassName.int4_weight: QuantizeCheck,
    PassName.gradual_magnitude: GradualMagnitudeCheck,
    PassName.qat: QuantizationAwareCheck,
    PassName.mlp_channels: MlpChannelsCheck,
    PassName.distill: DistillCheck,
    PassName.keep_sparsity: KeepSparsityCheck,
}


def pipeline_problems(compress: CompressConfig, shape: ModelShape | None, during_training: bool,
                      kinds: Mapping[PassName, type[PassCheck]] = CHECKS) -> list[str]:
    """Everything wrong with running this pipeline on this model, one line each, before anything runs.
    `kinds`: the class that checks each pass (compress/passes.py hands its passes, which add torch's checks)."""
    name = compress.name
    problems = []
    seen_quantizer = False
    for i, spec in enumerate(compress.passes):
        step = kinds[spec.name](spec, i)
        if step.during_training and not during_training:
            problems.append(f"compress={name}: {step.key}={step.name} runs during training; run "
                            f"`orchestrator train compress={name}`")
            continue
        if during_training and not step.during_training:
            problems.append(f"compress={name}: {step.key}={step.name} runs after training; train first, then "
                            f"`orchestrator compress run_dir=<run> compress={name}`")
            continue
        if step.spec.name in QUANTIZERS:
            if seen_quantizer:
                problems.append(f"{step.key}={step.name}: a pipeline quantizes at most once")
            seen_quantizer = True
        elif seen_quantizer and spec.name is PassName.distill:
            problems.append(f"{step.key}=distill: trains after quantization; distill before quantizing")
        elif seen_quantizer:
            problems.append(f"{step.key}={step.name}: prunes after quantization; put pruning passes first")
        problems += step.check(shape)
        shape = step.reshape(shape)
    names = [spec.name for spec in compress.passes]
    if PassName.keep_sparsity in names and PassName.gradual_magnitude in names:
        problems.append(f"compress={name}: keep_sparsity and gradual_magnitude in one pipeline: one mask each")
    if PassName.qat in names and PassName.gradual_magnitude in names:
        problems.append(f"compress={name}: qat and gradual_magnitude in one pipeline: train with one, then "
                        "fine-tune with the other (model.pretrained_path=<run>/model)")
    if names.count(PassName.qat) > 1:
        problems.append(f"compress={name}: a pipeline quantizes at most once (two qat passes)")
    if compress.max_ppl_increase is not None and compress.max_ppl_increase < 0:
        problems.append(f"compress.max_ppl_increase={compress.max_ppl_increase}: must be >= 0 (a share: 0.05 = 5%)")
    for key in ("eval_batches", "latency_runs"):
        value = getattr(compress, key)
        if value < 1:
            problems.append(f"compress.{key}={value}: must be >= 1")
    return problems


def _largest_divisor(widths: set[int]) -> str:
    fits = [g for g in INT4_GROUP_SIZES if all(n % g == 0 for n in widths)]
    return f"group_size={max(fits)}" if fits else "int8_weight (no int4 group size divides them)"
