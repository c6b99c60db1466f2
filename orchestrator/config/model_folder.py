"""What a local Hugging Face model folder holds, read from its files without torch or transformers: its shapes
(config.json), its exact parameter count (the safetensors headers), whether it is a causal LM, and whether it
brings a tokenizer. The config checks and the plan use it before anything launches.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every tensor's
dtype and shape, so counting parameters reads a few kilobytes per shard, never the weights. Tied weights are
stored once (transformers drops the tied copy), so the count equals `sum(p.numel() for p in
model.parameters())` of the loaded model.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from orchestrator.config.schema import Arch, ModelConfig

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
"""transformers' class names of causal LMs end so (LlamaForCausalLM, GPT2LMHeadModel, ...)."""

ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert",
                "camembert", "mpnet", "modernbert", "ernie", "megatron-bert", "funnel", "longformer"}
"""model_type of encoder-only families: what a folder without `architectures` is judged by."""

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")

TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def read_config(folder: Path) -> dict:
    """config.json; a multimodal or nested config's text part (`text_config`) carries the shapes."""
    config = json.loads((folder / "config.json").read_text())
    return {**config, **config["text_config"]} if isinstance(config.get("text_config"), dict) else config


def causal_lm_problem(folder: Path) -> str | None:
    """Why this folder cannot be trained as a causal LM (its kind, or no weights), else None."""
    config = read_config(folder)
    architectures = config.get("architectures") or []
    kind = ", ".join(architectures) or config.get("model_type", "unknown")
    if architectures and not any(name.endswith(CAUSAL_LM_SUFFIXES) for name in architectures):
        return f"is a {kind}, not a causal LM (architectures in config.json end in ForCausalLM or LMHeadModel)"
    if not architectures and config.get("model_type") in ENCODER_ONLY:
        return f"is an encoder-only model ({kind}), not a causal LM"
    if not safetensors_files(folder) and not any((folder / name).is_file() for name in TORCH_WEIGHTS):
        return "holds no weights (model.safetensors, its shards, or pytorch_model.bin)"
    return None


def classification_problem(folder: Path) -> str | None:
    """Why this folder cannot be fine-tuned as a sequence classifier (its family has no such head in
    transformers, or it holds no weights), else None. A bare encoder without a head is fine: the head is added."""
    config = read_config(folder)
    kind = config.get("model_type", "unknown")
    if kind not in _sequence_classification_families():
        names = ", ".join(config.get("architectures") or []) or kind
        return f"is a {names}: transformers has no sequence-classification head for model_type {kind!r}"
    if not safetensors_files(folder) and not any((folder / name).is_file() for name in TORCH_WEIGHTS):
        return "holds no weights (model.safetensors, its shards, or pytorch_model.bin)"
    return None


def _sequence_classification_families() -> set[str]:
    """The model_types transformers' AutoModelForSequenceClassification builds, read from its own table
    (MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES in modeling_auto.py) as source text: importing the module
    would import torch, and the config checks run before anything heavy."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    source = Path(spec.submodule_search_locations[0]) / "models" / "auto" / "modeling_auto.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "MODEL_FOR_SEQUENCE_CLASSIFICATION_"
                                                "MAPPING_NAMES" for target in node.targets):
            return {pair.elts[0].value for pair in node.value.args[0].elts}
    raise RuntimeError(f"{source} no longer holds MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES")


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files: the index's shards, else model.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def parameter_count(folder: Path) -> int | None:
    """Parameters of the model, from the safetensors headers (None with pytorch_model.bin weights only)."""
    files = safetensors_files(folder)
    if not files:
        return None
    return sum(math.prod(entry["shape"]) for path in files for name, entry in tensor_header(path)[0].items()
               if name != "__metadata__")


def tensor_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header (each tensor's dtype, shape and byte range) and where its data starts."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length)), 8 + length


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def model_config(folder: Path, base: ModelConfig) -> ModelConfig:
    """`base` with the folder's shapes: the plan's memory and FLOPs formulas read these. Encoders are planned
    with BERT's layer shape, other families than GPT-2 with Llama's (a gated MLP); the parameter count is exact
    either way."""
    c = read_config(folder)

    def first(*keys: str, default=None):
        return next((c[key] for key in keys if c.get(key) is not None), default)

    hidden = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head")
    return ModelConfig(
        name=folder.name,
        arch=Arch.gpt2 if c.get("model_type") == "gpt2" else Arch.bert if c.get("model_type") in ENCODER_ONLY
        else Arch.llama,
        num_layers=first("num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=first("num_key_value_heads", default=heads),
        intermediate_size=first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        vocab_size=first("vocab_size"),
        max_position_embeddings=first("max_position_embeddings", "n_positions"),
        dropout=base.dropout,
        tie_word_embeddings=c.get("tie_word_embeddings", True),
        pretrained_path=base.pretrained_path,
        attn_implementation=base.attn_implementation,
    )
