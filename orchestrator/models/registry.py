"""Build the causal LM a ModelConfig names: transformers owns the definitions, we map the shapes.

Models are initialised from a config (random weights, seeded) or loaded with
`from_pretrained(model.pretrained_path)` from a local folder; nothing is downloaded.
"""

from __future__ import annotations

from orchestrator.config.schema import ActivationCheckpointing, Arch, ModelConfig


def modeling_module(model: ModelConfig) -> str:
    """transformers' module of the model's family (read without importing transformers: the driver's import
    of it is what a rank's start-up overlaps, launch/worker_process.py)."""
    family = model.arch.value
    if model.pretrained_path:
        import json
        from pathlib import Path

        family = json.loads((Path(model.pretrained_path) / "config.json").read_text()).get("model_type", family)
    return f"transformers.models.{family}.modeling_{family}"


def hf_config(model: ModelConfig, vocab_size: int, seq_len: int, eos_token_id: int):
    """The transformers config for these shapes (vocab from the model config, else the tokenizer)."""
    from transformers import GPT2Config, LlamaConfig

    vocab = model.vocab_size or vocab_size
    positions = model.max_position_embeddings or seq_len
    inner = model.intermediate_size or 4 * model.hidden_size
    if model.arch is Arch.gpt2:
        return GPT2Config(
            vocab_size=vocab,
            n_positions=positions,
            n_embd=model.hidden_size,
            n_layer=model.num_layers,
            n_head=model.num_heads,
            n_inner=inner,
            resid_pdrop=model.dropout,
            embd_pdrop=model.dropout,
            attn_pdrop=model.dropout,
            tie_word_embeddings=model.tie_word_embeddings,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=model.hidden_size,
        intermediate_size=inner,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_kv_heads or model.num_heads,
        max_position_embeddings=positions,
        attention_dropout=model.dropout,
        tie_word_embeddings=model.tie_word_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


def import_model_code(model: ModelConfig) -> None:
    """Import the modeling code of the model's family (transformers' module and what it pulls in: 1,900 modules
    and 150 MB for GPT-2 in transformers 5), so that it counts as the start-up's imports, not as the memory the
    model's load adds (train/memory_probe.py)."""
    from transformers import AutoConfig, BertConfig, GPT2Config, LlamaConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if model.pretrained_path:
        config_class = type(AutoConfig.from_pretrained(model.pretrained_path))
    else:
        config_class = {Arch.gpt2: GPT2Config, Arch.llama: LlamaConfig, Arch.bert: BertConfig}[model.arch]
    MODEL_MAPPING[config_class]  # resolving the class imports its module


def build_model(model: ModelConfig, vocab_size: int, seq_len: int, eos_token_id: int,
                load_options: dict | None = None):
    """A transformers causal LM in fp32 (DeepSpeed casts for bf16/fp16). At ZeRO-3 (an HfDeepSpeedConfig alive,
    train/engine.py) a pretrained one loads partitioned, each rank reading only its share of the weights.
    `load_options` go to from_pretrained (a 4-bit base's quantization: models/quantized_base.py)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    from orchestrator.models import partitioned_load

    attention = model.attn_implementation.value
    if not model.pretrained_path:
        built = AutoModelForCausalLM.from_config(hf_config(model, vocab_size, seq_len, eos_token_id),
                                                 attn_implementation=attention)
    else:
        load_options = load_options or {}
        partitioned = is_deepspeed_zero3_enabled() and not load_options
        built = partitioned_load.load(model.pretrained_path, attention) if partitioned else None
        if built is None:  # not ZeRO-3, or a checkpoint whose keys transformers must convert as it loads
            built = AutoModelForCausalLM.from_pretrained(model.pretrained_path, attn_implementation=attention,
                                                         **load_options)
    built.loss_type = "ForCausalLM"  # name it, or transformers warns on every rank
    return built


def apply_activation_checkpointing(model, mode: ActivationCheckpointing, every: int) -> None:
    """Turn on transformers' activation checkpointing for every layer or every n-th layer.

    Non-reentrant checkpointing works with every ZeRO stage (ZeRO-3 gathers parameters again
    during recomputation through its module hooks).
    """
    if mode is ActivationCheckpointing.none:
        return
    model.config.use_cache = False  # a KV cache is meaningless while training and clashes with recompute
    model.activation_checkpointing_enable(
        {"use_reentrant": False}, every_n_layers=1 if mode is ActivationCheckpointing.full else every
    )
