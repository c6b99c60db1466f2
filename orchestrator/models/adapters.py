"""Adapters (peft's LoRA, DoRA and QLoRA, `peft=lora|dora|qlora`): injected into the model in place before
DeepSpeed wraps it, the base frozen (in 4 bits under QLoRA: models/quantized_base.py), so the optimizer holds
state for the adapters alone (and for peft.modules_to_save, and a classifier's head), at every ZeRO stage;
checkpoints leave the frozen weights out (train/engine.py), since a resume reloads them from the model they came
from.

By default every linear layer of the transformer blocks gets an adapter, never the output head. At the end,
rank 0 rebuilds the model in CPU memory from its config (one process, not under ZeRO-3; under QLoRA the base in
full precision), puts the trained weights in, and writes RUN/adapter in peft's format
(`PeftModel.from_pretrained(base, RUN/adapter)`) and, unless peft.merge=false, RUN/model with the adapters merged
into plain weights (`from_pretrained` without peft).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from orchestrator.config.schema import Config, PeftMethod
from orchestrator.models import quantized_base
from orchestrator.train.hooks import LoopHooks

CLASSIFIER_HEADS = ("classifier", "score")
"""transformers' names of a sequence-classification head: new weights that train in full beside the adapters."""


class Adapters(LoopHooks):
    """The `peft` config group's hook (train_command.py's standard hooks); a no-op with peft=none."""

    def __init__(self, cfg: Config) -> None:
        self.peft, self.base_path = cfg.peft, cfg.model.pretrained_path
        self.config = None
        self.counts: tuple[int, int] | None = None  # (trainable, all) parameters
        self.base: dict = {}  # the base model's path and the sha256 of its weights, once exported

    def before_engine(self, model) -> None:
        if self.peft.method is PeftMethod.none:
            return
        from peft import inject_adapter_in_model

        from orchestrator.train.engine import parameter_numel

        added = self._added_tokens(model)
        self.config = lora_config(self.peft, model, added)
        with _whole_on_cpu(model) if added else contextlib.nullcontext():
            inject_adapter_in_model(self.config, model)  # peft freezes everything else
        if added:
            _fetch_token_rows_whole(model)
        params = {id(p): p for p in model.parameters()}.values()
        sizes = [(parameter_numel(p), p.requires_grad) for p in params]
        self.counts = (sum(n for n, trains in sizes if trains), sum(n for n, _ in sizes))

    def _added_tokens(self, model) -> list[int]:
        """Token ids the run added to the base's vocabulary (a chat template's): their embedding rows must train,
        or the model could never read or write them."""
        if not self.base_path:
            return []
        from transformers import AutoConfig

        base_vocab = AutoConfig.from_pretrained(self.base_path).get_text_config().vocab_size
        added = list(range(base_vocab, model.get_input_embeddings().num_embeddings))
        if added and _rank() == 0:
            print(f"adapters: the {len(added)} tokens added to the vocabulary train their embedding rows too",
                  flush=True)
        return added

    def export(self, module, state: dict, folder: Path, val_batches: list, metrics: dict[str, float]) -> bool:
        if self.config is None:
            return False
        from peft import get_peft_model

        self.config.base_model_name_or_path = self.base_path
        model = get_peft_model(_export_base(module, self.base_path), self.config)
        _load_trained(model.base_model.model, state, strict=not quantized_base.is_quantized(module))
        model.save_pretrained(str(folder.parent / "adapter"))
        self.base = {"path": self.base_path, "sha256": weights_sha256(Path(self.base_path).expanduser())
                     if self.base_path else None}
        if self.peft.merge:
            model.merge_and_unload().save_pretrained(str(folder))
        return True

    def summary(self) -> dict:
        if self.counts is None:
            return {}
        trainable, total = self.counts
        return {"trainable_params": trainable, "trainable_share": trainable / total, "peft": self.peft.method.value,
                **({"base_model": self.base} if self.base else {})}


@contextlib.contextmanager
def switched_off(model):
    """The model as its base within the `with`: every adapter layer (and peft.modules_to_save copy) passes its
    input through untouched. Only peft's flag is set, not requires_grad (as peft's enable_adapters would), so
    DeepSpeed's gradient bookkeeping never sees the adapters change (DPO's reference: tasks/dpo.py)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield model
    finally:
        for layer in layers:
            layer._disable_adapters = False


def _export_base(module, base_path: str | None):
    """The model the export puts the trained weights into, on CPU: built from the config (every weight then comes
    from the trained state), or, under QLoRA, the base in full precision (only the trained weights come next)."""
    if quantized_base.is_quantized(module):
        return quantized_base.full_precision_base(module, base_path)
    from transformers import initialization

    with initialization.no_init_weights():
        return type(module)(module.config)


def _load_trained(model, state: dict, strict: bool) -> None:
    """The trained state into the export's model; not strict under QLoRA, whose state holds the base's 4-bit
    weights (other shapes and dtypes, and their quantization constants): those stay full precision."""
    if strict:
        model.load_state_dict(state)
        return
    own = model.state_dict()
    model.load_state_dict({name: value for name, value in state.items()
                           if name in own and own[name].shape == value.shape and value.is_floating_point()},
                          strict=False)


def lora_config(peft, model, added_tokens: list[int]):
    """peft's LoraConfig for the model: the named target modules, or every linear layer of its blocks; a
    classification head and the rows of added tokens trained in full."""
    from peft import LoraConfig

    targets = peft.target_modules or block_linears(model)
    heads = [name for name, _ in model.named_children() if name in CLASSIFIER_HEADS]
    return LoraConfig(r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, target_modules=list(targets),
                      modules_to_save=[*(peft.modules_to_save or []), *heads] or None,
                      trainable_token_indices=added_tokens or None, use_dora=peft.method is PeftMethod.dora)


def block_linears(model) -> list[str]:
    """The full names of the linear layers inside the model's transformer blocks (its longest ModuleList): the
    attention and MLP projections, not the embeddings, the output head, a pooler or a classifier."""
    import torch
    from transformers.pytorch_utils import Conv1D

    prefix, blocks = max(((name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)),
                         key=lambda named: len(named[1]))
    return [f"{prefix}.{name}" for name, m in blocks.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def weights_sha256(folder: Path) -> str:
    """One sha256 over the folder's weight files in name order: which base an adapter belongs to."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin")):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


@contextlib.contextmanager
def _whole_on_cpu(model):
    """On CPU workers under ZeRO-3, the model gathered whole on every rank while peft injects, with transformers'
    ZeRO-3 flag hidden meanwhile: peft's ZeRO-3 copy of the added tokens' rows allocates on CUDA only. CPU runs
    train small models; on GPUs peft's own ZeRO-3 path runs."""
    import torch
    from transformers.integrations import deepspeed as hf_deepspeed

    if torch.cuda.is_available() or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    live = hf_deepspeed._hf_deepspeed_config_weak_ref()
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        with deepspeed.zero.GatheredParameters([p for p in model.parameters() if hasattr(p, "ds_id")],
                                               modifier_rank=None):
            yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(live)


def _fetch_token_rows_whole(model) -> None:
    """ZeRO-3 gathers a module's own parameters before its forward; peft's trainable-token layer reads its base
    embedding's weight without calling it, so it is made a ZeRO-3 leaf: gathered with everything inside it."""
    if not hasattr(model.get_input_embeddings().weight, "ds_id"):
        return
    from deepspeed.utils import set_z3_leaf_modules
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    set_z3_leaf_modules(model, [TrainableTokensLayer])
