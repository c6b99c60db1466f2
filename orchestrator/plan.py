"""The plan: everything derived from the config before anything launches. Pure Python, no torch.

config in, Plan out: world size, batch arithmetic, parameter count and FLOPs per token.
The driver prints it before training (like nanoGPT's "tokens per iteration") and workers
receive it, so every rank agrees on the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from orchestrator.config.schema import Arch, Config, ModelConfig


@dataclass(frozen=True)
class Plan:
    world_size: int
    micro_batch_size: int
    grad_accum: int
    global_batch: int
    """Sequences per optimizer step: micro x accum x world."""
    seq_len: int
    tokens_per_step: int
    max_steps: int
    total_tokens: int
    params: int | None
    """Parameter count from the model's shapes (None for a pretrained_path model)."""
    flops_per_token: int | None
    """Training FLOPs per token: 6N + 12 x layers x hidden x seq_len (Kaplan/Chinchilla)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        params = f"{self.params / 1e6:.2f}M params" if self.params else "params from checkpoint"
        return (
            f"world_size={self.world_size}  global_batch={self.global_batch} "
            f"(micro {self.micro_batch_size} x accum {self.grad_accum} x {self.world_size} workers)  "
            f"tokens/step={self.tokens_per_step:,}  steps={self.max_steps}  "
            f"tokens={self.total_tokens:,}  {params}"
        )


def count_params(model: ModelConfig, vocab_size: int, seq_len: int) -> int:
    """Parameters of the transformers model these shapes build (checked against it in tests)."""
    h, layers = model.hidden_size, model.num_layers
    vocab = model.vocab_size or vocab_size
    inner = model.intermediate_size or 4 * h
    head = 0 if model.tie_word_embeddings else vocab * h
    if model.arch is Arch.gpt2:
        positions = model.max_position_embeddings or seq_len
        attention = 3 * h * h + 3 * h + h * h + h
        mlp = h * inner + inner + inner * h + h
        norms = 2 * 2 * h
        return vocab * h + positions * h + layers * (attention + mlp + norms) + 2 * h + head
    head_dim = h // model.num_heads
    kv = (model.num_kv_heads or model.num_heads) * head_dim
    attention = h * h + 2 * h * kv + h * h
    mlp = 3 * h * inner
    return vocab * h + layers * (attention + mlp + 2 * h) + h + head


def make_plan(cfg: Config) -> Plan:
    t = cfg.train
    world = cfg.cluster.num_workers
    global_batch = t.micro_batch_size * t.grad_accum * world
    tokens_per_step = global_batch * t.seq_len
    params = flops = None
    if cfg.model.pretrained_path is None:
        vocab = cfg.model.vocab_size or cfg.data.vocab_size
        params = count_params(cfg.model, vocab, t.seq_len)
        flops = 6 * params + 12 * cfg.model.num_layers * cfg.model.hidden_size * t.seq_len
    return Plan(
        world_size=world,
        micro_batch_size=t.micro_batch_size,
        grad_accum=t.grad_accum,
        global_batch=global_batch,
        seq_len=t.seq_len,
        tokens_per_step=tokens_per_step,
        max_steps=t.max_steps,
        total_tokens=tokens_per_step * t.max_steps,
        params=params,
        flops_per_token=flops,
    )
