"""Per-rank memory model: what one rank will hold, predicted from shapes alone. Pure, no torch.

Model states (Ψ parameters, N ranks, p = 2 bytes per parameter in bf16/fp16 or 4 in fp32):

| stage | parameters | gradients | optimizer states (fp32 master + Adam m, v) |
| ----- | ---------- | --------- | ------------------------------------------- |
| 0     | pΨ         | pΨ        | 12Ψ mixed precision, 8Ψ fp32 (no master)    |
| 1, 2  | pΨ         | pΨ/N      | 12Ψ/N                                       |
| 3     | pΨ/N       | pΨ/N      | 12Ψ/N                                       |

In mixed precision these are the ZeRO paper's 16Ψ, 4Ψ+12Ψ/N, 2Ψ+14Ψ/N and 16Ψ/N, with one
measured refinement: DeepSpeed's stage 1 also keeps only the reduced gradient partition at
the optimizer step, so it holds what stage 2 holds (its full-size gradients live only during
the backward pass). In fp32 DeepSpeed still keeps an fp32 master partition at stages 1-3.
Offloading the optimizer moves its states to CPU memory plus an fp32 gradient partition
(4Ψ/N); at stages 1-2 the device then keeps full-size gradients. These are the tensors
`train/memory_probe.py` measures, and bench/memory.py compares the two.

Activations per layer follow Korthikanti et al. 2022 (34·sbh + 5·a·s²·b bytes in 16-bit),
rewritten for the model's real MLP width (GeLU: 2 tensors of width I; SwiGLU: 4), without
dropout masks when dropout is 0, and for memory-efficient attention (PyTorch SDPA, which
transformers uses by default), which keeps the output and a log-sum-exp instead of the
a·s² score matrices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from orchestrator.config.schema import ActivationCheckpointing, Arch, Config, Offload, Precision

GB = 1e9
RUNTIME_OVERHEAD = 1.0 * GB
"""Per process: CUDA context and allocator slack on GPU; Python, torch, Ray and DeepSpeed on CPU
(a tiny model's worker peaks at about 0.9 GB RSS here)."""


@dataclass(frozen=True)
class Memory:
    """Bytes per rank. `*_offloaded` parts live in CPU memory, the rest on the rank's device."""

    params: int
    grads: int
    optimizer: int
    params_offloaded: int
    grads_offloaded: int
    optimizer_offloaded: int
    activations: int
    activations_no_checkpointing: int
    activations_full_checkpointing: int
    buffers: int
    overhead: int
    teacher: int = 0
    """A distillation teacher's weights (task=distill): whole at stages 0-2, 1/N at ZeRO-3; no gradients."""
    reference: int = 0
    """DPO's frozen reference (task=dpo without adapters): a copy of the model, whole at stages 0-2, 1/N at ZeRO-3."""

    @property
    def model_states(self) -> int:
        """Parameters, gradients and optimizer states, wherever they live."""
        return (self.params + self.grads + self.optimizer + self.params_offloaded + self.grads_offloaded
                + self.optimizer_offloaded)

    @property
    def device(self) -> int:
        """What the rank's device (GPU, or the CPU for CPU workers) must hold at peak."""
        return (self.params + self.grads + self.optimizer + self.teacher + self.reference + self.activations
                + self.buffers + self.overhead)

    @property
    def offloaded(self) -> int:
        return self.params_offloaded + self.grads_offloaded + self.optimizer_offloaded

    def to_dict(self) -> dict:
        return {**asdict(self), "model_states": self.model_states, "device": self.device,
                "offloaded": self.offloaded}


def precision_bytes(precision: Precision) -> int:
    return 4 if precision is Precision.fp32 else 2


QUANTIZED_BYTES_PER_PARAM = 4.127 / 8
"""A 4-bit NF4 weight with double-quantized block constants: 4.127 bits (the QLoRA paper, section 2)."""


def model_states(params: int, world: int, stage: int, precision: Precision, offload_optimizer: Offload,
                 offload_param: Offload, trainable: int | None = None, quantized: int = 0) -> dict[str, int]:
    """Per-rank bytes of parameters, gradients and optimizer states (table in the module docstring). With a
    frozen base (adapters), gradients and optimizer states exist for the `trainable` parameters only; the
    `quantized` ones (QLoRA's base) take 4.127 bits each."""
    p, n = precision_bytes(precision), world
    whole = p * (params - quantized) + QUANTIZED_BYTES_PER_PARAM * quantized
    param_bytes = math.ceil(whole) if stage < 3 else math.ceil(whole / n)
    psi = params if trainable is None else trainable
    grad_bytes = p * psi if stage == 0 else math.ceil(p * psi / n)
    if stage == 0:
        optim_bytes = (8 if precision is Precision.fp32 else 12) * psi
    else:
        optim_bytes = math.ceil(12 * psi / n)
    grads_offloaded = 0
    if offload_optimizer is not Offload.none:
        grads_offloaded = math.ceil(4 * psi / n)
        if stage in (1, 2):
            grad_bytes = p * psi
    off_o, off_p = offload_optimizer is not Offload.none, offload_param is not Offload.none
    return {
        "params": 0 if off_p else param_bytes,
        "params_offloaded": param_bytes if off_p else 0,
        "grads": grad_bytes,
        "grads_offloaded": grads_offloaded,
        "optimizer": 0 if off_o else optim_bytes,
        "optimizer_offloaded": optim_bytes if off_o else 0,
    }


def layer_activation_bytes(cfg: Config, micro_batch: int, precision: Precision) -> int:
    """Bytes one transformer layer keeps for its backward pass (no checkpointing)."""
    m, s, b = cfg.model, cfg.train.seq_len, micro_batch
    h, a = m.hidden_size, m.num_heads
    inner = m.intermediate_size or 4 * h
    e = precision_bytes(precision)
    sbh = s * b * h
    stored = 8 * e * sbh  # two norm inputs, QKV input, Q, K, V, attention output, out-projection input
    stored += 4 * a * s * b  # SDPA's log-sum-exp (fp32)
    stored += (4 if m.arch is Arch.llama else 2) * e * s * b * inner  # SwiGLU: gate, up, act, product
    if m.dropout > 0:
        stored += 2 * sbh  # one-byte masks after attention and MLP
    return stored


def activation_bytes(cfg: Config, micro_batch: int, precision: Precision,
                     mode: ActivationCheckpointing) -> int:
    """Activations held at the peak of one micro-batch's backward pass, per rank."""
    m, s, b = cfg.model, cfg.train.seq_len, micro_batch
    e = precision_bytes(precision)
    layer = layer_activation_bytes(cfg, micro_batch, precision)
    layer_input = e * s * b * m.hidden_size
    vocab = m.vocab_size or cfg.data.vocab_size
    edges = 2 * layer_input + (e + 4) * s * b * vocab  # embedding output, final norm, logits (+ fp32 for the loss)
    layers = m.num_layers
    if mode is ActivationCheckpointing.none:
        return layers * layer + edges
    every = 1 if mode is ActivationCheckpointing.full else cfg.train.activation_checkpointing_every
    checkpointed = math.ceil(layers / every)
    # Checkpointed layers keep only their input; one of them is recomputed whole at a time.
    return checkpointed * layer_input + (layers - checkpointed) * layer + layer + edges


def buffer_bytes(cfg: Config, stage: int, precision: Precision, largest_layer_params: int) -> int:
    """DeepSpeed's communication buckets and ZeRO-3's gathered parameters, per rank."""
    z, h = cfg.zero, cfg.model.hidden_size
    p = precision_bytes(precision)
    reduce = z.reduce_bucket_size or h * h
    if stage in (1, 2):
        return p * (reduce + (z.allgather_bucket_size or h * h))
    if stage == 3:
        prefetch = z.prefetch_bucket_size or int(0.9 * h * h)
        live = min(z.max_live_parameters, 2 * largest_layer_params)  # the layer in use and the next
        return p * (reduce + prefetch + live)
    return 0


def estimate(cfg: Config, params: int, world: int, stage: int, precision: Precision, offload_optimizer: Offload,
             offload_param: Offload, checkpointing: ActivationCheckpointing, micro_batch: int,
             largest_layer_params: int, trainable: int | None = None, quantized: int = 0,
             teacher_params: int = 0, reference_params: int = 0) -> Memory:
    states = model_states(params, world, stage, precision, offload_optimizer, offload_param, trainable, quantized)
    teacher = precision_bytes(precision) * teacher_params
    reference = precision_bytes(precision) * reference_params
    return Memory(
        **states,
        teacher=math.ceil(teacher / world) if stage == 3 else teacher,
        reference=math.ceil(reference / world) if stage == 3 else reference,
        activations=activation_bytes(cfg, micro_batch, precision, checkpointing),
        activations_no_checkpointing=activation_bytes(cfg, micro_batch, precision, ActivationCheckpointing.none),
        activations_full_checkpointing=activation_bytes(cfg, micro_batch, precision, ActivationCheckpointing.full),
        buffers=buffer_bytes(cfg, stage, precision, largest_layer_params),
        overhead=int(RUNTIME_OVERHEAD),
    )
