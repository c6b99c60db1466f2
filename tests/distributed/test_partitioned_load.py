"""A pretrained checkpoint loaded at ZeRO-3 in two real processes: every rank's partitions hold exactly its
range of the checkpoint's tensors (cast from the checkpoint's bf16, the padding zeroed), tied weights stay tied,
and the gathered model equals the checkpoint. (The fp32 checkpoint read straight into the partitions is
tests/e2e/test_sft.py's ZeRO-3 run, whose first loss equals the ZeRO-2 run's.)"""

from __future__ import annotations

from tests.helpers import on_two_ranks


def _load_on_rank(rank: int, folder: str) -> tuple:
    """One rank: load partitioned, then report every tensor whose partition or gathered value is wrong."""
    import deepspeed
    import torch
    from safetensors.torch import load_file
    from transformers.integrations import HfDeepSpeedConfig

    from orchestrator.models import partitioned_load

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    live = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    model = partitioned_load.load(folder, "sdpa")
    stored = load_file(f"{folder}/model.safetensors")
    wrong = []
    for name, param in model.named_parameters():
        size = param.ds_tensor.numel()
        expected = torch.zeros(size, dtype=param.dtype)
        flat = stored[name].to(param.dtype).view(-1)[rank * size:(rank + 1) * size]
        expected[:len(flat)] = flat
        if size >= param.ds_numel or not torch.equal(param.ds_tensor, expected):
            wrong.append(f"partition of {name}")
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        for name, param in model.named_parameters():
            if not torch.equal(param.data, stored[name].to(param.dtype)):
                wrong.append(f"gathered {name}")
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    del live
    return wrong, tied, str(next(model.parameters()).dtype)


def _saved(folder, config, model_class, dtype):
    import torch

    torch.manual_seed(0)
    model_class(config).to(dtype).save_pretrained(str(folder))
    return folder


def test_each_rank_reads_exactly_its_partition_of_the_checkpoint(tmp_path):
    """A GPT-2 with a tied head and an odd width (a norm's last partition is padded), saved in bf16."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=301, n_positions=64, n_embd=33, n_layer=2, n_head=3)
    GPT2LMHeadModel(config).to(torch.bfloat16).save_pretrained(str(tmp_path))
    assert on_two_ranks(_load_on_rank, str(tmp_path)) == {0: ([], True, "torch.float32"),
                                                          1: ([], True, "torch.float32")}
