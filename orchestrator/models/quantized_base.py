"""QLoRA's base (`peft=qlora`): the pretrained model loaded with its linear layers quantized to 4 bits (NF4, double
quantization, bitsandbytes), the adapters then trained in the run's precision on top (models/adapters.py).

The 4-bit weights are stored in the run's compute dtype (`bnb_4bit_quant_storage`), as DeepSpeed ZeRO-3 needs to
partition them like any other parameter; they never train, so they hold no gradients or optimizer state. The
output head and a classifier's head stay in full precision. The command refuses qlora where no CUDA GPU is
visible (config/adapter_checks.py): bitsandbytes' 4-bit kernels are CUDA's; the CPU fallback it ships is for
tests (tests/distributed/test_qlora.py), far too slow to train on.
"""

from __future__ import annotations

from orchestrator.config.adapter_checks import FULL_PRECISION_MODULES
from orchestrator.config.schema import Config, PeftMethod


def load_options(cfg: Config) -> dict:
    """Extra `from_pretrained` arguments: none unless peft=qlora; then the 4-bit quantization and, below ZeRO-3,
    this rank's device (bitsandbytes quantizes as the weights land on it)."""
    if cfg.peft.method is not PeftMethod.qlora:
        return {}
    import torch
    from transformers import BitsAndBytesConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    from orchestrator.train.engine import torch_dtype

    dtype = torch_dtype(cfg.train.precision)
    options = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
                                                         bnb_4bit_quant_storage=dtype,
                                                         llm_int8_skip_modules=FULL_PRECISION_MODULES),
               "dtype": dtype}
    if not is_deepspeed_zero3_enabled():  # ZeRO-3 places the weights itself, as it partitions them
        options["device_map"] = {"": f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"}
    return options


def is_quantized(model) -> bool:
    return getattr(model, "is_quantized", False)


def full_precision_base(module, base_path: str):
    """The base in full precision on CPU, for the export: the adapters merge into the original weights, not
    into their 4-bit approximation. Its vocabulary grows to the trained model's (a chat template's tokens)."""
    import copy

    config = copy.deepcopy(module.config)
    del config.quantization_config
    config.dtype = "float32"
    base = type(module).from_pretrained(base_path, config=config, dtype="float32", device_map={"": "cpu"})
    vocab = module.get_input_embeddings().num_embeddings
    if base.get_input_embeddings().num_embeddings != vocab:
        base.resize_token_embeddings(vocab)
    return base
