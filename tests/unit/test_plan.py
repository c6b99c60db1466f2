"""The plan is pure arithmetic: batch math, parameter counts, FLOPs, the DeepSpeed dict."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.config.compose import compose
from orchestrator.config.schema import Arch, ModelConfig
from orchestrator.plan.deepspeed import deepspeed_config
from orchestrator.plan.plan import count_params, make_plan


def test_global_batch_is_micro_times_accum_times_world():
    plan = make_plan(compose(["train.micro_batch_size=4", "train.grad_accum=3", "cluster.num_workers=2",
                              "train.seq_len=64", "train.max_steps=10"]))
    assert plan.global_batch == 24
    assert plan.tokens_per_step == 24 * 64
    assert plan.total_tokens == 24 * 64 * 10


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt2-124m", 124_439_808), ("llama-1b", 1_235_814_400)],  # GPT-2 small; Llama 3.2 1B
)
def test_parameter_count_of_real_shapes(model, expected):
    cfg = compose([f"model={model}", "train.seq_len=128"])
    assert make_plan(cfg).params == expected


@pytest.mark.parametrize(
    "model",
    [
        ModelConfig(arch=Arch.gpt2, num_layers=2, hidden_size=64, num_heads=4, vocab_size=500,
                    tie_word_embeddings=False),
        ModelConfig(arch=Arch.llama, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=96,
                    vocab_size=300),
    ],
    ids=["gpt2-untied", "llama-gqa"],
)
def test_parameter_count_matches_the_transformers_model(model):
    from orchestrator.models.registry import build_model

    built = build_model(model, vocab_size=1000, seq_len=32, eos_token_id=0)
    assert count_params(model, vocab_size=1000, seq_len=32) == sum(p.numel() for p in built.parameters())


def test_flops_per_token_is_6n_plus_attention_term():
    cfg = compose(["model=gpt2-124m", "train.seq_len=1024"])
    plan = make_plan(cfg)
    assert plan.flops_per_token == 6 * plan.params + 12 * 12 * 768 * 1024


def test_deepspeed_config_follows_zero_and_precision():
    cfg = compose(["zero=3_offload", "train.precision=bf16", "train.grad_accum=2"])
    ds = deepspeed_config(cfg, make_plan(cfg))
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["optimizer"]["params"]["torch_adam"] is False  # DeepSpeed's CPU Adam for offloaded states
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * 2 * 2


def test_config_and_plan_paths_import_no_torch_ray_or_deepspeed():
    code = (
        "import sys; from orchestrator.cli import main; from orchestrator.config.compose import compose;"
        "from orchestrator.plan.plan import make_plan; from orchestrator.plan.deepspeed import deepspeed_config;"
        "cfg = compose(['zero=3']); deepspeed_config(cfg, make_plan(cfg));"
        "heavy = [m for m in ('torch', 'ray', 'deepspeed', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_warns_when_the_run_directorys_filesystem_cannot_hold_the_checkpoints_it_keeps(compose_tiny, monkeypatch,
                                                                                         capsys, tmp_path):
    """keep_checkpoints=2 checkpoints and the one being written: three of them must fit at once."""
    from orchestrator.plan import command

    cfg = compose_tiny(f"run_dir={tmp_path / 'run'}", "train.keep_checkpoints=2", "train.ckpt_every=10",
                       "train.max_steps=100")
    size = command._scale(cfg, command.make_plan(cfg), None, None).checkpoint_bytes_total
    for free, warned in ((3 * size - 1, True), (3 * size, False)):
        monkeypatch.setattr(command, "free_bytes", lambda path, free=free: free)
        assert command.run(cfg, None) == 0
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.startswith(f"warning: run_dir {tmp_path}")]
        assert bool(lines) is warned
        if warned:
            assert "3 checkpoints of" in lines[0] and "train.keep_checkpoints=2" in lines[0]
