"""Adapters (peft=lora|dora|qlora): the plan counts exactly what peft injects, from built-in shapes or a folder's
files; bad peft keys are refused in one line before anything starts; the export's merged model gives the logits
of the base with the adapter."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from orchestrator import cli
from orchestrator.config.adapter_checks import adapter_params
from orchestrator.config.compose import compose
from orchestrator.models.adapters import Adapters

SHAPES = ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=4", "model.vocab_size=64",
          "train.seq_len=16"]


def _injected(cfg, model):
    hook = Adapters(cfg)
    hook.before_engine(model)
    return hook


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_the_plan_counts_the_parameters_peft_injects_for_built_in_shapes(arch, method):
    from orchestrator.models.registry import build_model

    cfg = compose([f"model.arch={arch}", *SHAPES, "model.num_kv_heads=2" if arch == "llama" else "model.dropout=0",
                   f"peft={method}", "peft.r=4"])
    model = build_model(cfg.model, 64, 16, 0)
    hook = _injected(cfg, model)
    assert hook.counts[0] == adapter_params(cfg) > 0
    assert not any(p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)


def test_the_plan_counts_the_adapters_of_a_folder_from_its_files_and_named_targets_only(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(str(tmp_path / "m"))
    for targets in ([], ["q_proj", "v_proj"]):
        cfg = compose([f"model.pretrained_path={tmp_path / 'm'}", "peft=lora", "peft.r=2",
                       f"peft.target_modules={json.dumps(targets) if targets else 'null'}"])
        model = LlamaForCausalLM.from_pretrained(str(tmp_path / "m"))
        assert _injected(cfg, model).counts[0] == adapter_params(cfg) > 0
    assert adapter_params(cfg) == 2 * 2 * ((32 + 32) + (32 + 16))  # q: 32 -> 32, v: 32 -> 16, two layers


def test_the_plan_line_says_what_trains(capsys):
    assert cli.main(["plan", *SHAPES, "peft=lora", "peft.r=4"]) == 0
    assert ", trainable 4.10K of 32.1K, 12.75%" in capsys.readouterr().out  # 2 layers x 4 x (128 + 64 + 160 + 160)


@pytest.mark.parametrize(("overrides", "message"), [
    (["peft=lora", "peft.r=0"], "peft.r=0: must be >= 1 (the adapters' rank)"),
    (["peft=lora", "peft.target_modules=[qkv]"], "peft.target_modules=['qkv']: matches no linear layer of the "
                                                "model; its linear layers are c_attn, c_fc, c_proj, lm_head"),
    (["peft=qlora", "cluster.gpus_per_worker=0"], "peft=qlora: the base is quantized to 4 bits by bitsandbytes, "
                                                  "which needs CUDA GPUs and none is visible"),
], ids=["rank-0", "no-such-target", "qlora-without-cuda"])
def test_bad_peft_keys_are_refused_before_anything_starts(tmp_path, capsys, overrides, message):
    assert cli.main(["train", *SHAPES, *overrides, f"run_dir={tmp_path / 'run'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_qlora_needs_a_pretrained_base(tmp_path, capsys):
    assert cli.main(["train", *SHAPES, "peft=qlora", "cluster.gpus_per_worker=1", f"run_dir={tmp_path / 'run'}"]) == 2
    assert "peft=qlora: quantizes a pretrained base to 4 bits; set model.pretrained_path" in capsys.readouterr().err


def test_the_plan_sizes_a_qlora_base_at_4_bits_and_its_heads_in_full(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.config.compose import compose_dictconfig
    from orchestrator.plan.plan import make_plan

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32,
                               tie_word_embeddings=False)).save_pretrained(str(tmp_path / "m"))
    plans = {}
    for method in ("lora", "qlora"):
        cfg = OmegaConf.to_object(compose_dictconfig([f"model.pretrained_path={tmp_path / 'm'}", f"peft={method}",
                                                      "zero=0", "train.precision=bf16", "cluster.gpus_per_worker=1"]))
        plans[method] = make_plan(cfg).memory["params"]
    block_linears = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)  # c_attn, c_proj, c_fc, mlp.c_proj
    assert plans["lora"] - plans["qlora"] == pytest.approx(block_linears * (2 - 4.127 / 8), abs=1)


def test_an_adapter_folder_without_its_base_is_refused_naming_the_base(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/m/base"}))
    assert cli.main(["train", "peft=lora", f"model.pretrained_path={tmp_path / 'adapter'}",
                     f"run_dir={tmp_path / 'run'}"]) == 2
    assert "is a peft adapter without its base model; set model.pretrained_path to its base (/m/base)" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_the_merged_export_gives_the_logits_of_the_base_with_the_adapter(tmp_path, method):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from orchestrator.models.registry import build_model

    cfg = compose([*SHAPES, f"peft={method}", "peft.r=4"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 64, 16, 0)
    base_state = {key: value.clone() for key, value in model.state_dict().items()}
    hook = _injected(cfg, model)
    with torch.no_grad():  # as training would: every adapter moved away from its zero start
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    batch = torch.randint(0, 64, (2, 12))
    want = model.eval()(batch).logits
    (tmp_path / "model").mkdir()
    assert hook.export(model, model.state_dict(), tmp_path / "model", [], {})
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    base = build_model(cfg.model, 64, 16, 0)
    base.load_state_dict(base_state)
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(merged(batch).logits, want, atol=1e-5)
        assert torch.allclose(adapted(batch).logits, want, atol=1e-5)


def test_zero_auto_sizes_a_frozen_base_by_what_trains():
    """GPT-2 124M on 2 workers with 6 GB each: full fine-tuning must shard its optimizer state (zero=1), while
    LoRA's states are small enough for every rank to hold whole (zero=0)."""
    from orchestrator.plan.plan import make_plan

    chosen = {}
    for method in ("none", "lora"):
        plan = make_plan(compose(["model=gpt2-124m", f"peft={method}", "zero=auto", "cluster.cpu_memory_gb=6",
                                  "cluster.num_workers=2", "train.seq_len=256", "train.micro_batch_size=1"]))
        chosen[method] = (plan.zero_stage, plan.fits, plan.memory["optimizer"])
    assert chosen["none"][:2] == (1, True) and chosen["lora"][:2] == (0, True)
    assert chosen["lora"][2] < 0.05 * chosen["none"][2]
