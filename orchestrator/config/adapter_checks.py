"""What `peft=lora|dora|qlora` would train, without torch: the linear layers of the model (from a folder's
safetensors headers, or from the built-in shapes), which of them peft.target_modules names, and the adapters'
parameter count. The plan reports it and sizes the model states by it; the config checks refuse targets that
match nothing, before anything starts.

peft matches a target against a module's full name, or the end of it after a dot (`q_proj` matches
`model.layers.0.self_attn.q_proj`). The default targets are the linear layers inside the numbered transformer
blocks: never the embeddings, the output head, a pooler or a classifier.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

from orchestrator.config import model_folder
from orchestrator.config.schema import Arch, Config, PeftMethod

FULL_PRECISION_MODULES = ["lm_head", "classifier", "score"]
"""Never quantized under QLoRA: the output head (transformers' own default) and a sequence classifier's head,
which trains."""

_IN_A_BLOCK = re.compile(r"\.\d+\.")
_EMBEDDINGS = re.compile(r"(^|\.)(wte|wpe|embed_tokens|\w*embeddings?)$")


def linear_layers(cfg: Config) -> list[tuple[str, int, int]]:
    """(module name, in features, out features) of every linear layer of the model; none known for a folder
    without config.json or safetensors weights."""
    m = cfg.model
    if m.pretrained_path:
        folder = Path(m.pretrained_path).expanduser()
        if not (folder / "config.json").is_file():  # refused elsewhere: no model there
            return []
        conv1d = model_folder.read_config(folder).get("model_type") == "gpt2"  # stores (in, out); Linear (out, in)
        return [(name, *(shape if conv1d else shape[::-1])) for name, shape in _weights(folder)]
    h, inner = m.hidden_size, m.intermediate_size or 4 * m.hidden_size
    kv = (m.num_kv_heads or m.num_heads) * (h // m.num_heads)
    if m.arch is Arch.gpt2:
        block, shapes = "transformer.h", [("attn.c_attn", h, 3 * h), ("attn.c_proj", h, h), ("mlp.c_fc", h, inner),
                                          ("mlp.c_proj", inner, h)]
    elif m.arch is Arch.bert:
        block, shapes = "bert.encoder.layer", [(f"attention.self.{n}", h, h) for n in ("query", "key", "value")] + [
            ("attention.output.dense", h, h), ("intermediate.dense", h, inner), ("output.dense", inner, h)]
    else:
        block, shapes = "model.layers", [("self_attn.q_proj", h, h), ("self_attn.k_proj", h, kv),
                                         ("self_attn.v_proj", h, kv), ("self_attn.o_proj", h, h),
                                         ("mlp.gate_proj", h, inner), ("mlp.up_proj", h, inner),
                                         ("mlp.down_proj", inner, h)]
    layers = [(f"{block}.{i}.{name}", fan_in, fan_out) for i in range(m.num_layers) for name, fan_in, fan_out in shapes]
    return layers + ([("bert.pooler.dense", h, h)] if m.arch is Arch.bert else [("lm_head", h, m.vocab_size or 0)])


def _weights(folder: Path) -> list[tuple[str, tuple[int, int]]]:
    """The 2-D `.weight` tensors of a folder's safetensors files that are not embeddings, by module name."""
    found = []
    for path in model_folder.safetensors_files(folder):
        for name, entry in model_folder.tensor_header(path)[0].items():
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and len(entry.get("shape", ())) == 2 and not _EMBEDDINGS.search(module):
                found.append((module, tuple(entry["shape"])))
    return found


def targeted(cfg: Config, layers: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The layers that get adapters: those peft.target_modules names, else every one inside a block."""
    targets = cfg.peft.target_modules
    if not targets:
        return [layer for layer in layers if _IN_A_BLOCK.search(layer[0])]
    return [layer for layer in layers if any(layer[0] == t or layer[0].endswith("." + t) for t in targets)]


def adapter_params(cfg: Config) -> int | None:
    """Parameters the adapters add (r x (in + out) per targeted layer; DoRA adds a magnitude per output);
    None without adapters, or when the model's layers cannot be read (weights only in pytorch_model.bin)."""
    p = cfg.peft
    layers = linear_layers(cfg) if p.method is not PeftMethod.none else []
    if not layers:
        return None
    dora = p.method is PeftMethod.dora
    return sum(p.r * (fan_in + fan_out) + (fan_out if dora else 0) for _, fan_in, fan_out in targeted(cfg, layers))


def quantized_params(cfg: Config) -> int:
    """Weights QLoRA stores in 4 bits: every linear layer's but the output and classifier heads'
    (models/quantized_base.py); 0 without peft=qlora."""
    if cfg.peft.method is not PeftMethod.qlora:
        return 0
    return sum(fan_in * fan_out for name, fan_in, fan_out in linear_layers(cfg)
               if name.rsplit(".", 1)[-1] not in FULL_PRECISION_MODULES)


def problems(cfg: Config, gpus: int) -> list[str]:
    """peft's keys that cannot work, one line each."""
    p = cfg.peft
    if p.method is PeftMethod.none:
        return []
    found = []
    if p.r < 1:
        found.append(f"peft.r={p.r}: must be >= 1 (the adapters' rank)")
    if p.alpha <= 0:
        found.append(f"peft.alpha={p.alpha}: must be > 0")
    if not 0 <= p.dropout < 1:
        found.append(f"peft.dropout={p.dropout}: must be in [0, 1)")
    if p.method is PeftMethod.qlora and gpus == 0:
        found.append("peft=qlora: the base is quantized to 4 bits by bitsandbytes, which needs CUDA GPUs and none "
                     "is visible; use peft=lora on this machine")
    elif p.method is PeftMethod.qlora and importlib.util.find_spec("bitsandbytes") is None:
        found.append("peft=qlora: needs bitsandbytes, which is not installed: pip install -e '.[qlora]'")
    if p.method is PeftMethod.qlora and not cfg.model.pretrained_path:
        found.append("peft=qlora: quantizes a pretrained base to 4 bits; set model.pretrained_path (a model "
                     "built from a config has nothing worth keeping frozen: use peft=lora or peft=none)")
    layers = linear_layers(cfg)
    if layers and p.target_modules and not targeted(cfg, layers):
        names = sorted({name.rsplit(".", 1)[-1] for name, _, _ in layers})
        found.append(f"peft.target_modules={p.target_modules}: matches no linear layer of the model; its linear "
                     f"layers are {', '.join(names)}")
    return found


def adapter_folder_problem(folder: Path) -> str | None:
    """A peft adapter folder (adapter_config.json, no config.json) given as the model: name its base."""
    adapter = folder / "adapter_config.json"
    if (folder / "config.json").is_file() or not adapter.is_file():
        return None
    import json

    base = json.loads(adapter.read_text()).get("base_model_name_or_path") or "the model it was trained on"
    return (f"is a peft adapter without its base model; set model.pretrained_path to its base ({base}), or use "
            "the run's merged model/ folder")


def share(trainable: int, total: int) -> str:
    """'4.2M of 1.24B, 0.34%'."""
    def short(n: int) -> str:
        for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= size:
                return f"{n / size:.{max(0, 2 - int(math.log10(n / size)))}f}{unit}"
        return str(n)

    return f"{short(trainable)} of {short(total)}, {100 * trainable / total:.2f}%"
