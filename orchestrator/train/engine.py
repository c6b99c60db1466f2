"""DeepSpeed glue, and the only module that imports deepspeed.

DeepSpeed owns sharding (ZeRO), offload, mixed precision, gradient accumulation and clipping,
and checkpoint files; this module only chooses the accelerator at run time and wraps the
few engine calls the loop needs.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

SHARED_MEMORY_OP, CPU_ADAM_OP = "ShareMemCommBuilder", "CPUAdamBuilder"


def use_cpu_accelerator_unless_cuda() -> str:
    """Pick DeepSpeed's accelerator before deepspeed is imported: cuda when present, else cpu+gloo."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", device)
    return device


def extensions_dir() -> Path:
    """Where this Python environment builds DeepSpeed's C++ ops (TORCH_EXTENSIONS_DIR unless the user set one).

    torch's default is one folder per Python version and accelerator, shared by every environment on the
    machine: two virtual environments rebuilt each other's op at every other start (32-40 s of a run's engine
    phase here). With one folder per environment, torch version and DeepSpeed version, each op is built once.
    """
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from importlib.metadata import version

    tag = hashlib.sha256(f"{sys.prefix}|{version('torch')}|{version('deepspeed')}".encode()).hexdigest()[:12]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path.home() / ".cache" / "torch_extensions" / f"{python}-orchestrator-{tag}"


def ops_for(ds_config: dict) -> list[str]:
    """The C++ ops a CPU engine loads: the shared-memory collectives, and CPU Adam when the optimizer is offloaded."""
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"
    return [SHARED_MEMORY_OP, *([CPU_ADAM_OP] if offload else [])]


def build_missing_ops(names: list[str]) -> None:
    """In the driver, before any worker starts: build the ops this environment has never built (about 35 s for
    the shared-memory op on 2 cores), so the first run's workers only load them. Built inside a worker, the
    build counted against the job's start-up and collective timeouts. Checks files only: no torch import."""
    ops, root = {SHARED_MEMORY_OP: "deepspeed_shm_comm", CPU_ADAM_OP: "cpu_adam"}, extensions_dir()
    missing = [name for name in names if not (root / ops[name] / f"{ops[name]}.so").exists()]
    if not missing:
        return
    print(f"building DeepSpeed's {', '.join(ops[name] for name in missing)} op for this Python environment "
          f"(once; about a minute on 2 cores) in {root}", flush=True)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    build_ops(missing)


def build_ops(names: list[str]) -> None:
    """Load (JIT-building if needed) the DeepSpeed C++ ops the engine will load, one builder at a time.

    DeepSpeed builds them under torch's FileBaton: a plain `lock` file that outlives a builder killed
    mid-build (the watchdog, SIGKILL, preemption), after which every later run on the machine waits on
    it forever (seen here). We build under an fcntl lock instead, which dies with its holder: whoever
    holds it is the only builder, so a baton file found then is stale and is removed. DeepSpeed then
    finds the op already loaded in this process.
    """
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    import filelock
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops import __compatible_ops__
    from torch.utils.cpp_extension import _get_build_directory  # where torch builds and locks (private)

    for name in names:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not __compatible_ops__.get(builder.NAME, False):
            continue
        build_dir = Path(_get_build_directory(builder.name, verbose=False))
        with filelock.FileLock(str(build_dir.parent / f"{build_dir.name}.orchestrator-lock")):
            (build_dir / "lock").unlink(missing_ok=True)
            builder.load(verbose=False)


def import_libraries() -> None:
    """Import DeepSpeed and transformers up front, so the start-up breakdown shows their cost as its own phase."""
    import deepspeed  # noqa: F401
    import transformers  # noqa: F401


def sharded_loading(ds_config: dict, pretrained: bool):
    """At ZeRO-3, a pretrained model is partitioned as it loads, so no rank ever holds all of it: transformers'
    `from_pretrained` loads under DeepSpeed's zero.Init while this object lives (keep it until the engine is
    built). None otherwise: a model built from its config is initialised whole and seeded the same on every
    rank, then partitioned by deepspeed.initialize."""
    if not pretrained or ds_config.get("zero_optimization", {}).get("stage") != 3:
        return None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    build_ops(ops_for(ds_config))
    deepspeed.init_distributed(verbose=False)  # zero.Init partitions over the ranks Ray Train connected
    return HfDeepSpeedConfig(ds_config)


def torch_dtype(precision: str):
    """The torch dtype of a precision (`bf16`, `fp16`, `fp32`; a Precision is one of these strings)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def parameter_count(model) -> int:
    """Parameters of the whole model, also when ZeRO-3 has partitioned them or bitsandbytes packed them."""
    return sum(parameter_numel(p) for p in model.parameters())


def parameter_numel(param) -> int:
    """A parameter's element count as the model defines it: its whole size under ZeRO-3 (each rank holds a
    partition), its unpacked size when bitsandbytes stores it in 4 bits (two or more values per element)."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None:
        return math.prod(quant_state.shape)
    return getattr(param, "ds_numel", param.numel())


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """AdamW parameter groups as nanoGPT and Hugging Face's Trainer make them: weight decay on the
    matrices of linear layers only; none on biases, norm weights and embeddings (decaying them
    toward zero only hurts). Tied weights appear once."""
    import torch

    no_decay_modules = (torch.nn.Embedding, torch.nn.LayerNorm)
    exempt = set()
    for module in model.modules():
        norm = isinstance(module, no_decay_modules) or "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if norm or name.endswith("bias") or param.ndim < 2:
                exempt.add(id(param))
    trainable = [p for p in model.parameters() if p.requires_grad]  # each shared parameter once
    groups = [{"params": [p for p in trainable if id(p) not in exempt], "weight_decay": weight_decay},
              {"params": [p for p in trainable if id(p) in exempt], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def initialize(model, ds_config: dict, lr_lambda: Callable[[int], float], weight_decay: float):
    """Wrap the model in a DeepSpeed engine with the configured optimizer and our LR schedule."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    build_ops(ops_for(ds_config))

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=parameter_groups(model, weight_decay),
        config=ds_config,
        lr_scheduler=lambda optimizer: LambdaLR(optimizer, lr_lambda),
    )
    return engine


def save_checkpoint(engine, checkpoint_dir: Path, tag: str) -> None:
    """Every rank writes its ZeRO shard into checkpoint_dir/tag. We seal and point `latest` ourselves
    (checkpoint.py) only once every rank has finished, so DeepSpeed's own `latest` is not written. Frozen
    parameters (a base model under adapters) are left out: training never changes them, and a resume loads
    them from where they came from."""
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, save_latest=False,
                           exclude_frozen_parameters=has_frozen_parameters(engine.module))


def load_checkpoint(engine, checkpoint_dir: Path, tag: str) -> None:
    """Model, optimizer (this rank's shard) and LR scheduler state, exactly as saved."""
    path, _ = engine.load_checkpoint(str(checkpoint_dir), tag=tag, load_optimizer_states=True,
                                     load_lr_scheduler_states=True,
                                     load_module_strict=not has_frozen_parameters(engine.module))
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {checkpoint_dir / tag}")


def has_frozen_parameters(module) -> bool:
    return any(not param.requires_grad for param in module.parameters())


def full_state_dict(engine) -> dict:
    """The whole model's weights. A collective under ZeRO-3 (all ranks call; rank 0 gets them)."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def gathered(engine, params: list):
    """A context in which `params` are whole on every rank: DeepSpeed's GatheredParameters under ZeRO-3
    (a collective: every rank enters it), nothing to do at stages 0-2."""
    import contextlib

    if not engine.zero_optimization_partition_weights():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def consolidated_state_dict(checkpoint_path: Path, zero_stage: int) -> dict:
    """The whole model's fp32 weights (and buffers) from one of our checkpoints, in this process, without a
    process group: DeepSpeed's zero_to_fp32 merges the ranks' ZeRO 1-3 shards; stage 0 saved it whole."""
    import torch

    if zero_stage == 0:
        return torch.load(checkpoint_path / "mp_rank_00_model_states.pt", map_location="cpu",
                          weights_only=False)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_path.parent), tag=checkpoint_path.name)
