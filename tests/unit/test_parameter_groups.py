"""AdamW parameter groups: weight decay on the linear layers' matrices only."""

from __future__ import annotations

import pytest

from orchestrator.config.schema import Arch, ModelConfig
from orchestrator.models.registry import build_model
from orchestrator.train.engine import parameter_groups


@pytest.mark.parametrize("arch", [Arch.gpt2, Arch.llama])
def test_biases_norms_and_embeddings_get_no_weight_decay(arch):
    model = build_model(ModelConfig(arch=arch, num_layers=2, hidden_size=32, num_heads=4, vocab_size=100),
                        vocab_size=100, seq_len=16, eos_token_id=0)
    decayed, exempt = parameter_groups(model, 0.1)
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert exempt_names and decayed_names
    assert all(name.endswith("bias") or "norm" in name or "ln_" in name or "wte" in name or "wpe" in name
               or "embed_tokens" in name for name in exempt_names), exempt_names
    assert all(name.endswith("weight") and "norm" not in name and "ln_" not in name for name in decayed_names)
    # every trainable parameter is in exactly one group, tied embeddings once
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
