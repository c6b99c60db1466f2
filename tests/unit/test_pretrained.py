"""A model folder users bring: planned from its files (exact parameter count, its shapes, zero=auto), its own
tokenizer used, and a folder that is not a causal LM, or holds no weights, refused before anything starts."""

from __future__ import annotations

import pytest

from orchestrator import cli
from orchestrator.config.compose import compose
from orchestrator.errors import ConfigError
from orchestrator.plan.plan import make_plan


def _saved(folder, config, model_class):
    """A model with random weights and a byte-level BPE tokenizer, saved as a user's folder would be."""
    import torch

    from orchestrator.data.tokenizer import train_bpe

    torch.manual_seed(0)
    model = model_class(config)
    model.save_pretrained(str(folder))
    train_bpe(["a small corpus for a small tokenizer"] * 20, 300).save_pretrained(str(folder))
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(folder, loaded parameter count) of a GPT-2 (tied head) and a Llama with grouped-query attention."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    built = {}
    for name, config, model_class in [
        ("gpt2", GPT2Config(vocab_size=300, n_positions=128, n_embd=64, n_layer=2, n_head=4), GPT2LMHeadModel),
        ("llama", LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
         LlamaForCausalLM),
    ]:
        model = _saved(root / name, config, model_class)
        built[name] = (root / name, sum(p.numel() for p in model.parameters()))
    return built


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_the_plan_counts_exactly_the_parameters_the_loaded_model_has(folders, name):
    folder, loaded = folders[name]
    plan = make_plan(compose([f"model.pretrained_path={folder}", "train.seq_len=64"]))
    assert plan.params == loaded
    assert plan.flops_per_token > 6 * loaded and plan.memory["model_states"] > 0


def test_plan_prints_the_count_and_a_memory_plan_and_zero_auto_picks_a_stage(folders, capsys):
    folder, loaded = folders["llama"]
    assert cli.main(["plan", f"model.pretrained_path={folder}", "zero=auto", "cluster.cpu_memory_gb=8"]) == 0
    out = capsys.readouterr().out
    assert f"({loaded:,})" in out and "model states" in out and "zero=auto: chose zero=" in out


def test_the_folders_own_tokenizer_reads_the_data(folders):
    folder, _ = folders["gpt2"]
    assert compose([f"model.pretrained_path={folder}"]).data.tokenizer_path == str(folder)


def test_an_encoder_only_model_is_refused_naming_its_kind(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    _saved(tmp_path, BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), BertForMaskedLM)
    with pytest.raises(ConfigError) as refused:
        compose([f"model.pretrained_path={tmp_path}"])
    [problem] = refused.value.problems
    assert problem.startswith(f"model.pretrained_path={tmp_path}: is a BertForMaskedLM, not a causal LM")


def test_a_folder_without_weights_is_refused(folders, tmp_path):
    folder, _ = folders["gpt2"]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ConfigError) as refused:
        compose([f"model.pretrained_path={tmp_path}"])
    assert "holds no weights" in refused.value.problems[0]


def test_a_checkpoint_whose_keys_do_not_map_onto_the_model_is_left_to_transformers(folders, tmp_path):
    """At ZeRO-3 a checkpoint is read partition by partition only when its tensors are the model's parameters one
    for one; a renamed key (one transformers would convert as it loads) sends it through from_pretrained."""
    import shutil

    from safetensors.torch import load_file, save_file

    from orchestrator.models import partitioned_load

    folder = shutil.copytree(folders["llama"][0], tmp_path / "renamed")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.norm.gamma"] = tensors.pop("model.norm.weight")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert partitioned_load.load(str(folder), "sdpa") is None
