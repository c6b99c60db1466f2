"""QLoRA in two real DeepSpeed processes: the task loads the base in 4 bits (bitsandbytes; its CPU fallback here,
CUDA for users, where alone the command accepts peft=qlora), the adapters train over it at ZeRO-3 (the 4-bit
weights partitioned too), and the export writes an adapter that peft loads onto the full-precision base and a
merged model whose logits equal that pair's. The driver's side (the refusal without CUDA) is
tests/unit/test_adapters.py's."""

from __future__ import annotations

import pytest

from tests.helpers import on_two_ranks

pytest.importorskip("bitsandbytes")


def _train_on_rank(rank: int, base: str, out: str) -> tuple:
    from pathlib import Path

    import deepspeed
    import torch
    from omegaconf import OmegaConf

    from orchestrator import tasks
    from orchestrator.config.compose import compose_dictconfig
    from orchestrator.models.adapters import Adapters
    from orchestrator.plan.deepspeed import deepspeed_config
    from orchestrator.plan.plan import make_plan, resolved_config
    from orchestrator.train import engine as ds

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    cfg = OmegaConf.to_object(compose_dictconfig([  # not validated: the command refuses qlora without CUDA
        "peft=qlora", "peft.r=4", f"model.pretrained_path={base}", "zero=3", "train.precision=fp32",
        "cluster.num_workers=2", "train.micro_batch_size=2", "train.grad_accum=1", "optim.lr=1e-2"]))
    plan = make_plan(cfg)
    cfg = resolved_config(cfg, plan)
    ds_config = deepspeed_config(cfg, plan)
    sharded = ds.sharded_loading(ds_config, pretrained=True)  # as the worker loads: transformers' ZeRO-3 on
    model = tasks.for_config(cfg).build_model(cfg, {"vocab_size": 128, "eos_token_id": 0})
    adapters = Adapters(cfg)
    adapters.before_engine(model)
    engine = ds.initialize(model, ds_config, lambda step: 1.0, 0.0)
    del sharded
    partitioned = all(hasattr(p, "ds_id") for p in model.parameters())
    torch.manual_seed(0)
    batch = torch.randint(0, 128, (2, 16))
    losses = []
    for _ in range(4):
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    quantized = type(model.transformer.h[0].attn.c_attn.base_layer).__name__
    state = ds.full_state_dict(engine)
    if rank == 0:
        adapters.export(engine.module, state, Path(out) / "model", [], {})
    return losses, quantized, partitioned, adapters.summary()


def test_qlora_trains_adapters_on_a_4bit_base_and_exports_them_merged(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32)).save_pretrained(base)
    reported = on_two_ranks(_train_on_rank, str(base), str(tmp_path))
    losses, quantized, partitioned, summary = reported[0]
    assert quantized == "Linear4bit" and partitioned
    assert losses[-1] < losses[0] and reported[1][0] == losses  # it learns, and the ranks agree
    assert summary["peft"] == "qlora" and 0 < summary["trainable_share"] < 0.2

    x = torch.randint(0, 128, (2, 16))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert not hasattr(merged.config, "quantization_config")
    paired = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter").eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        expected = paired(input_ids=x).logits
        assert torch.allclose(merged(input_ids=x).logits, expected, atol=1e-4)
        assert not torch.allclose(plain(input_ids=x).logits, expected, atol=1e-3)  # the adapters trained
