"""The plan: everything derived from the config before anything launches. Pure Python, no torch.

config in, Plan out: world size, batch arithmetic, parameter count, FLOPs per token, per-rank
memory (memory.py) and whether it fits the cluster. `auto` values are resolved here:
`train.precision=auto` becomes bf16 on GPUs and fp32 on CPU; `zero=auto` walks the ladder
0 -> 1 -> 2 -> 3 -> 3 + CPU offload, then activation checkpointing, then a smaller
micro-batch with more accumulation (same global batch), and takes the first that fits.
The driver prints the plan before training (like nanoGPT's "tokens per iteration") and
workers receive it, so every rank agrees on the same numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.config import model_folder
from orchestrator.config.adapter_checks import adapter_params, quantized_params, share
from orchestrator.config.distill_checks import teacher_params
from orchestrator.config.schema import (
    ActivationCheckpointing,
    Arch,
    Backend,
    Config,
    ModelConfig,
    Offload,
    Precision,
    TaskName,
)
from orchestrator.errors import ConfigError
from orchestrator.machine import host_memory_bytes, visible_gpus
from orchestrator.plan.memory import GB, Memory, estimate


@dataclass(frozen=True)
class Plan:
    world_size: int
    ranks_per_node: int
    uses_gpus: bool
    micro_batch_size: int
    grad_accum: int
    global_batch: int
    """Sequences per optimizer step: micro x accum x world."""
    seq_len: int
    tokens_per_step: int
    max_steps: int
    total_tokens: int
    precision: str
    zero_stage: int
    offload_optimizer: str
    offload_param: str
    activation_checkpointing: str
    params: int
    """Parameter count: from the model's shapes, or a pretrained folder's safetensors headers (exact); with
    adapters, theirs added."""
    flops_per_token: int
    """Training FLOPs per token: 6N + 12 x layers x hidden x seq_len (Kaplan/Chinchilla)."""
    memory: dict
    """Per-rank bytes (memory.Memory.to_dict())."""
    fits: bool | None = None
    fit_problems: list[str] = field(default_factory=list)
    auto_reasons: list[str] = field(default_factory=list)
    """Why zero=auto chose this configuration, one line per rejected or accepted candidate."""
    trainable_params: int | None = None
    """With adapters (peft=lora, dora): the parameters that train, the rest frozen. None: all of them train."""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        params = f"{self.params / 1e6:.2f}M params ({self.params:,})"
        if self.trainable_params is not None:
            params += f", trainable {share(self.trainable_params, self.params)}"
        return (
            f"world_size={self.world_size}  global_batch={self.global_batch} "
            f"(micro {self.micro_batch_size} x accum {self.grad_accum} x {self.world_size} workers)  "
            f"tokens/step={self.tokens_per_step:,}  steps={self.max_steps}  "
            f"tokens={self.total_tokens:,}  {params}  zero={self.zero_stage}{self._offload_label()}  "
            f"precision={self.precision}"
        )

    def _offload_label(self) -> str:
        parts = [f"{k}:{v}" for k, v in (("optimizer", self.offload_optimizer), ("param", self.offload_param))
                 if v != "none"]
        return f" (offload {', '.join(parts)})" if parts else ""

    def memory_table(self) -> str:
        m = self.memory
        where = "GPU" if self.uses_gpus else "CPU worker"
        lines = [
            f"memory per rank (zero={self.zero_stage}{self._offload_label()}, {self.precision}, "
            f"activation checkpointing {self.activation_checkpointing}, micro-batch {self.micro_batch_size}):",
            f"  parameters        {_gb(m['params'] + m['params_offloaded'])}{_off(m['params_offloaded'])}",
            f"  gradients         {_gb(m['grads'] + m['grads_offloaded'])}{_off(m['grads_offloaded'])}",
            f"  optimizer states  {_gb(m['optimizer'] + m['optimizer_offloaded'])}{_off(m['optimizer_offloaded'])}",
            f"  model states      {_gb(m['model_states'])}",
            *([f"  teacher (frozen)  {_gb(m['teacher'])}"] if m.get("teacher") else []),
            *([f"  reference (frozen){_gb(m['reference'])}"] if m.get("reference") else []),
            f"  activations       {_gb(m['activations'])}  (none: {_gb(m['activations_no_checkpointing'])}, "
            f"full checkpointing: {_gb(m['activations_full_checkpointing'])})",
            f"  working buffers   {_gb(m['buffers'])}",
            f"  runtime overhead  {_gb(m['overhead'])}",
            f"  {where} total  {_gb(m['device'])}"
            + (f"  +{_gb(m['offloaded'])} in CPU memory" if m["offloaded"] else ""),
        ]
        if self.fits is None:
            lines.append("fit: not checked (set cluster.gpu_memory_gb / cluster.cpu_memory_gb)")
        elif self.fits:
            lines.append("fit: fits")
        else:
            lines += [f"fit: DOES NOT FIT: {p}" for p in self.fit_problems]
        return "\n".join(lines)


def _gb(value: int) -> str:
    return f"{value / GB:8.3f} GB"


def _off(value: int) -> str:
    return "  (in CPU memory)" if value else ""


def count_params(model: ModelConfig, vocab_size: int, seq_len: int) -> int:
    """Parameters of the transformers model these shapes build (checked against it in tests)."""
    h, layers = model.hidden_size, model.num_layers
    vocab = model.vocab_size or vocab_size
    head = 0 if model.tie_word_embeddings else vocab * h
    positions = model.max_position_embeddings or seq_len
    if model.arch is Arch.gpt2:
        return vocab * h + positions * h + layers * layer_params(model) + 2 * h + head
    if model.arch is Arch.bert:  # + 2 token types, the embeddings' LayerNorm and the pooler; no LM head
        return (vocab + positions + 2) * h + 2 * h + layers * layer_params(model) + h * h + h
    return vocab * h + layers * layer_params(model) + h + head


def layer_params(model: ModelConfig) -> int:
    """Parameters of one transformer layer."""
    h = model.hidden_size
    inner = model.intermediate_size or 4 * h
    if model.arch in (Arch.gpt2, Arch.bert):  # the same layer: biased projections, a plain MLP, two LayerNorms
        attention = 3 * h * h + 3 * h + h * h + h
        mlp = h * inner + inner + inner * h + h
        return attention + mlp + 2 * 2 * h
    kv = (model.num_kv_heads or model.num_heads) * (h // model.num_heads)
    return h * h + 2 * h * kv + h * h + 3 * h * inner + 2 * h


def uses_gpus(cfg: Config) -> bool:
    c = cfg.cluster
    if c.name is Backend.local:
        return c.gpus_per_worker > 0 if c.gpus_per_worker is not None else visible_gpus() >= c.num_workers
    if c.name is Backend.ray:
        return bool(c.gpus_per_worker)
    return c.gpus_per_node > 0


def workers_per_node(cfg: Config) -> int:
    """Ray Train workers on each machine of a slurm/k8s allocation: one per GPU, or as configured."""
    c = cfg.cluster
    return c.workers_per_node or c.gpus_per_node or 1


def world_and_ranks_per_node(cfg: Config) -> tuple[int, int]:
    c = cfg.cluster
    if c.name in (Backend.local, Backend.ray):
        return c.num_workers, c.num_workers
    per_node = workers_per_node(cfg)
    return c.nodes * per_node, per_node


def gpus_per_worker(cfg: Config) -> int | None:
    """GPUs each worker reserves; None on `local` means: decide from what Ray sees at start."""
    c = cfg.cluster
    if c.name in (Backend.local, Backend.ray):
        return c.gpus_per_worker
    return 1 if c.gpus_per_node else 0


def _host_memory_bytes(cfg: Config) -> float | None:
    if cfg.cluster.cpu_memory_gb is not None:
        return cfg.cluster.cpu_memory_gb * GB
    return host_memory_bytes() if cfg.cluster.name is Backend.local else None


def _fit_problems(cfg: Config, memory: Memory, gpus: bool, ranks_per_node: int) -> tuple[bool | None, list[str]]:
    problems, checked = [], False
    if gpus and cfg.cluster.gpu_memory_gb is not None:
        checked = True
        if memory.device > cfg.cluster.gpu_memory_gb * GB:
            problems.append(f"needs {memory.device / GB:.1f} GB per GPU > cluster.gpu_memory_gb="
                            f"{cfg.cluster.gpu_memory_gb:g}")
    host = _host_memory_bytes(cfg)
    if host is not None:
        checked = True
        per_rank = memory.offloaded + (memory.overhead if gpus else memory.device)
        need = ranks_per_node * per_rank
        if need > host:
            problems.append(f"needs {need / GB:.1f} GB of CPU memory per node ({ranks_per_node} ranks x "
                            f"{per_rank / GB:.1f} GB) > {host / GB:.1f} GB (cluster.cpu_memory_gb)")
    return (not problems) if checked else None, problems


def make_plan(cfg: Config) -> Plan:
    """The plan for cfg, with `auto` precision and `zero=auto` resolved."""
    gpus = uses_gpus(cfg)
    precision = cfg.train.precision
    if precision is Precision.auto:
        precision = Precision.bf16 if gpus else Precision.fp32
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))
    cfg = with_model_shapes(cfg)
    exact_params = None
    if cfg.model.pretrained_path is not None:
        exact_params = model_folder.parameter_count(Path(cfg.model.pretrained_path).expanduser())
    if cfg.zero.auto:
        return _choose(cfg, exact_params)
    return _plan_for(cfg, [], exact_params)


def with_model_shapes(cfg: Config) -> Config:
    """cfg with a pretrained folder's shapes (its config.json) in place of model.*'s: what the formulas of the
    plan, the DeepSpeed config and the at-scale figures read. A built-in shape's cfg comes back as it is."""
    if cfg.model.pretrained_path is None:
        return cfg
    folder = Path(cfg.model.pretrained_path).expanduser()
    return dataclasses.replace(cfg, model=model_folder.model_config(folder, cfg.model))


def _plan_for(cfg: Config, reasons: list[str], exact_params: int | None = None) -> Plan:
    t, z = cfg.train, cfg.zero
    world, ranks_per_node = world_and_ranks_per_node(cfg)
    gpus = uses_gpus(cfg)
    global_batch = t.micro_batch_size * t.grad_accum * world
    # A preference pair is two rows (chosen, rejected), each also run through the frozen reference (forward only).
    pairs = cfg.task.name is TaskName.dpo
    rows = 2 if pairs else 1
    tokens_per_step = global_batch * t.seq_len * rows
    vocab = cfg.model.vocab_size or cfg.data.vocab_size
    trainable = adapter_params(cfg)  # the adapters: they add to the model and are all that trains
    params = (exact_params or count_params(cfg.model, vocab, t.seq_len)) + (trainable or 0)
    attention = 12 * cfg.model.num_layers * cfg.model.hidden_size * t.seq_len
    flops = 6 * params + attention + ((2 * params + attention // 3) if pairs else 0)
    largest = max(layer_params(cfg.model), vocab * cfg.model.hidden_size)
    reference = params if pairs and trainable is None else 0  # with adapters: the model with them off
    mem = estimate(cfg, params, world, z.stage, t.precision, z.offload_optimizer,
                   z.offload_param, t.activation_checkpointing, t.micro_batch_size * rows, largest, trainable,
                   quantized_params(cfg), teacher_params(cfg), reference)
    memory = mem.to_dict()
    fits, problems = _fit_problems(cfg, mem, gpus, ranks_per_node)
    return Plan(
        world_size=world,
        ranks_per_node=ranks_per_node,
        uses_gpus=gpus,
        micro_batch_size=t.micro_batch_size,
        grad_accum=t.grad_accum,
        global_batch=global_batch,
        seq_len=t.seq_len,
        tokens_per_step=tokens_per_step,
        max_steps=t.max_steps,
        total_tokens=tokens_per_step * t.max_steps,
        precision=t.precision.value,
        zero_stage=z.stage,
        offload_optimizer=z.offload_optimizer.value,
        offload_param=z.offload_param.value,
        activation_checkpointing=t.activation_checkpointing.value,
        params=params,
        flops_per_token=flops,
        memory=memory,
        fits=fits,
        fit_problems=problems,
        auto_reasons=reasons,
        trainable_params=trainable,
    )


_LADDER = [
    (0, Offload.none, Offload.none),
    (1, Offload.none, Offload.none),
    (2, Offload.none, Offload.none),
    (3, Offload.none, Offload.none),
    (3, Offload.cpu, Offload.cpu),
]


def _choose(cfg: Config, exact_params: int | None) -> Plan:
    """zero=auto: the least-communication configuration that fits, and why."""
    reasons: list[str] = []
    t = cfg.train
    micro, accum = t.micro_batch_size, t.grad_accum
    checkpointing = [t.activation_checkpointing]
    if t.activation_checkpointing is not ActivationCheckpointing.full:
        checkpointing.append(ActivationCheckpointing.full)
    last = None
    while True:
        for mode in checkpointing:
            for stage, off_opt, off_param in _LADDER:
                candidate = dataclasses.replace(
                    cfg,
                    zero=dataclasses.replace(cfg.zero, auto=False, stage=stage, offload_optimizer=off_opt,
                                             offload_param=off_param),
                    train=dataclasses.replace(t, micro_batch_size=micro, grad_accum=accum,
                                              activation_checkpointing=mode),
                )
                plan = _plan_for(candidate, [], exact_params)
                label = (f"zero={stage}{'_offload' if off_opt is not Offload.none else ''} "
                         f"activation_checkpointing={mode.value} micro_batch_size={micro} grad_accum={accum}")
                if plan.fits is not False:
                    reasons.append(f"chose {label}: {plan.memory['device'] / GB:.1f} GB per rank"
                                   + (" (no memory limit known: set cluster.gpu_memory_gb or cpu_memory_gb)"
                                      if plan.fits is None else " fits"))
                    return dataclasses.replace(plan, auto_reasons=reasons)
                reasons.append(f"rejected {label}: {plan.fit_problems[0]}")
                last = plan
        if micro == 1 or micro % 2:
            reasons.append("nothing fits: add nodes, use a smaller model or shorter train.seq_len")
            return dataclasses.replace(last, auto_reasons=reasons)
        micro, accum = micro // 2, accum * 2


def refuse_unfit(cfg: Config, plan: Plan) -> None:
    """Fail before launch when the plan predicts the job will not fit (unless plan.force)."""
    if plan.fits is False and not cfg.plan.force:
        raise ConfigError([f"the plan does not fit: {problem} (see `orchestrator plan`; "
                           "try zero=auto, or plan.force=true to run anyway)" for problem in plan.fit_problems])


def resolved_config(cfg: Config, plan: Plan) -> Config:
    """cfg with the plan's resolved choices written back (what the workers run and config.yaml shows)."""
    return dataclasses.replace(
        cfg,
        zero=dataclasses.replace(cfg.zero, auto=False, stage=plan.zero_stage,
                                 offload_optimizer=Offload(plan.offload_optimizer),
                                 offload_param=Offload(plan.offload_param)),
        train=dataclasses.replace(cfg.train, precision=Precision(plan.precision),
                                  micro_batch_size=plan.micro_batch_size, grad_accum=plan.grad_accum,
                                  activation_checkpointing=ActivationCheckpointing(plan.activation_checkpointing)),
    )
