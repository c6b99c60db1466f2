"""Compression's pure parts: mask schedules, sparsity arithmetic, model surgery, byte counts, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from orchestrator.compress import pruning, surgery
from orchestrator.compress.passes import pipeline_problems
from orchestrator.config.compress_checks import ModelShape
from orchestrator.config.schema import CompressConfig, PassConfig, PassName
from orchestrator.errors import ConfigError


def test_cubic_schedule_rises_from_zero_to_the_final_sparsity():
    values = [pruning.cubic_sparsity(s, 10, 110, 0.5) for s in range(0, 130, 10)]
    assert values[:2] == [0.0, 0.0] and values[-2:] == [0.5, 0.5]  # steps 0, 10 (start); 110 (end), 120
    assert all(a < b for a, b in zip(values[1:-2], values[2:-1], strict=True))  # strictly rising in between
    assert pruning.cubic_sparsity(60, 10, 110, 0.5) == pytest.approx(0.5 * (1 - 0.5**3))


@pytest.mark.parametrize("global_ranking", [True, False])
def test_magnitude_masks_prune_exact_counts_even_with_ties(global_ranking):
    torch.manual_seed(0)
    weights = {"a": torch.randn(8, 16), "b": torch.randn(4, 16) * 10}
    weights["a"][:4] = 0.0  # 64 tied zeros: a threshold would overshoot
    masks = pruning.magnitude_masks(weights, 0.3, global_ranking)
    pruned = {name: int((mask == 0).sum()) for name, mask in masks.items()}
    if global_ranking:
        assert sum(pruned.values()) == round(0.3 * 192)
        assert pruned["a"] > pruned["b"]  # the small layer gives more
    else:
        assert pruned == {"a": round(0.3 * 128), "b": round(0.3 * 64)}
    if global_ranking:  # every pruned weight is no larger than every kept one
        pruned_max = torch.cat([weights[n][masks[n] == 0].abs() for n in weights]).max()
        kept_min = torch.cat([weights[n][masks[n] == 1].abs() for n in weights]).min()
        assert pruned_max <= kept_min


def test_magnitude_pass_reaches_the_sparsity_globally_and_per_layer():
    torch.manual_seed(0)
    layers = {"x": nn.Linear(32, 16), "y": nn.Linear(16, 64)}
    with torch.no_grad():
        layers["y"].weight.mul_(5)
    pruning.magnitude(layers, 0.5, global_ranking=True)
    zeros = {n: (m.weight == 0).float().mean().item() for n, m in layers.items()}
    assert (zeros["x"] * 512 + zeros["y"] * 1024) / 1536 == pytest.approx(0.5, abs=1e-3)
    assert zeros["x"] > 0.5 > zeros["y"]
    assert not hasattr(layers["x"], "weight_orig")  # baked in, no parametrization left
    layers = {"x": nn.Linear(32, 16), "y": nn.Linear(16, 64)}
    pruning.magnitude(layers, 0.25, global_ranking=False)
    assert [(m.weight == 0).float().mean().item() for m in layers.values()] == [0.25, 0.25]


def test_two_of_four_zeroes_the_two_smallest_of_every_four():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    original = layer.weight.detach().clone()
    pruning.two_of_four({"l": layer})
    groups, before = layer.weight.view(-1, 4), original.view(-1, 4)
    assert ((groups == 0).sum(dim=1) == 2).all()
    kept = before.abs().topk(2, dim=1).indices
    assert torch.equal(groups.gather(1, kept), before.gather(1, kept))


def test_gpt2_conv1d_becomes_linear_with_identical_outputs_and_back():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=16)).eval()
    ids = torch.randint(0, 64, (2, 16))
    reference = model(ids).logits
    assert surgery.conv1d_to_linear(model) == 4
    assert set(surgery.prunable(model)) == {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                            "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"}
    assert surgery.head_is_tied(model)
    assert torch.allclose(model(ids).logits, reference, atol=1e-5)
    assert surgery.linear_to_conv1d(model) == 4
    assert torch.allclose(model(ids).logits, reference, atol=1e-5)
    assert type(model.lm_head) is nn.Linear


def test_int8_weights_hold_a_quarter_of_their_fp32_bytes_counting_scales():
    from orchestrator.compress import quantization
    from orchestrator.compress.measure import weight_bytes

    model = nn.Sequential(nn.Linear(128, 256), nn.Linear(256, 128))
    layers = {"0": model[0], "1": model[1]}
    fp32 = weight_bytes(layers)
    assert fp32 == 2 * 128 * 256 * 4
    quantization.quantize(model, layers, PassConfig(name=PassName.int8_weight))
    assert quantization.is_quantized(model[0].weight)
    assert 0.25 < weight_bytes(layers) / fp32 < 0.27  # int8 data + one fp32 scale per output row


SHAPE = ModelShape("llama", hidden_size=128, intermediate_size=512, tied_head=True)


def _pipeline(*passes: PassConfig, **keys) -> CompressConfig:
    return CompressConfig(name="test", passes=list(passes), **keys)


@pytest.mark.parametrize(("pipeline", "during_training", "message"), [
    (_pipeline(PassConfig(name=PassName.int4_weight, group_size=48)), False,
     "compress.passes[0].group_size=48: must be one of 32, 64, 128, 256"),
    (_pipeline(PassConfig(name=PassName.int4_weight, group_size=256)), False,
     "compress.passes[0].group_size=256: must divide every layer's input width [128, 512]; try group_size=128"),
    (_pipeline(PassConfig(name=PassName.int8_dynamic, lm_head=True)), False,
     "compress.passes[0].lm_head=true: the output head is tied to the input embedding"),
    (_pipeline(PassConfig(name=PassName.int8_dynamic), PassConfig(name=PassName.magnitude)), False,
     "compress.passes[1]=magnitude: prunes after quantization; put pruning passes first"),
    (_pipeline(PassConfig(name=PassName.int8_dynamic), PassConfig(name=PassName.int8_weight)), False,
     "compress.passes[1]=int8_weight: a pipeline quantizes at most once"),
    (_pipeline(PassConfig(name=PassName.magnitude, sparsity=1.0)), False,
     "compress.passes[0].sparsity=1.0: must be in (0, 1)"),
    (_pipeline(PassConfig(name=PassName.gradual_magnitude)), False,
     "compress=test: compress.passes[0]=gradual_magnitude runs during training; run `orchestrator train"),
    (_pipeline(PassConfig(name=PassName.wanda)), True,
     "compress=test: compress.passes[0]=wanda runs after training"),
    (_pipeline(PassConfig(name=PassName.gradual_magnitude, start_step=50, end_step=20)), True,
     "compress.passes[0].end_step=20: must be after start_step=50"),
    (_pipeline(PassConfig(name=PassName.magnitude), max_ppl_increase=-0.1), False,
     "compress.max_ppl_increase=-0.1: must be >= 0"),
    (_pipeline(PassConfig(name=PassName.qat, bits=6)), True, "compress.passes[0].bits=6: must be 8 or 4"),
    (_pipeline(PassConfig(name=PassName.qat, bits=4, group_size=256)), True,
     "compress.passes[0].group_size=256: must divide every layer's input width [128, 512]; try group_size=128"),
    (_pipeline(PassConfig(name=PassName.qat), PassConfig(name=PassName.gradual_magnitude)), True,
     "compress=test: qat and gradual_magnitude in one pipeline"),
    (_pipeline(PassConfig(name=PassName.qat)), False, "compress=test: compress.passes[0]=qat runs during training"),
])
def test_impossible_pipelines_are_refused_in_one_line_each(pipeline, during_training, message):
    problems = pipeline_problems(pipeline, SHAPE, during_training)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_every_named_pipeline_passes_its_own_checks(compose_tiny):
    from omegaconf import OmegaConf

    from orchestrator.config.compose import compose_dictconfig, groups

    shape = ModelShape("gpt2", 128, 512, tied_head=True)
    for name in groups()["compress"]:
        compress = OmegaConf.to_object(compose_dictconfig([f"compress={name}"])).compress
        training = any(p.name in (PassName.gradual_magnitude, PassName.qat) for p in compress.passes)
        assert pipeline_problems(compress, shape, during_training=training) == [], name
    assert compose_tiny("compress=gradual_prune50").compress.passes[0].sparsity == 0.5


def test_train_refuses_a_post_training_pipeline():
    from orchestrator.config.compose import compose

    with pytest.raises(ConfigError) as error:
        compose(["compress=int8_dynamic"])
    assert error.value.problems == ["compress=int8_dynamic: compress.passes[0]=int8_dynamic runs after training; "
                                    "train first, then `orchestrator compress run_dir=<run> compress=int8_dynamic`"]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_mlp_channel_pruning_removes_the_least_used_channels_and_saves_a_smaller_plain_model(arch, tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from orchestrator.compress import artifact

    torch.manual_seed(0)
    config = (GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=16, n_inner=128) if arch == "gpt2"
              else LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=2, max_position_embeddings=16))
    model = AutoModelForCausalLM.from_config(config).eval()
    surgery.conv1d_to_linear(model)
    blocks = [m for n, m in model.named_modules() if n.endswith(".mlp")]
    reader = "c_proj" if arch == "gpt2" else "down_proj"
    dead = torch.arange(0, 128, 4)  # 32 channels nobody reads
    with torch.no_grad():
        for block in blocks:
            getattr(block, reader).weight[:, dead] = 0.0
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        reference = model(ids).logits
    assert pruning.mlp_channels(model, 0.25) == 96  # 128 x 0.75, a multiple of 32
    assert all(getattr(block, reader).weight.shape[1] == 96 for block in blocks)
    with torch.no_grad():  # exactly the unread channels went: the function is unchanged
        assert torch.allclose(model(ids).logits, reference, atol=1e-5)
    artifact.save(model, tmp_path, None)
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, reference, atol=1e-5)
    assert pruning.kept_channels(100, 0.5) == 32 and pruning.kept_channels(1000, 0.25) == 736


def test_gradual_pruning_by_default_prunes_in_the_last_two_fifths_and_leaves_a_sixth_to_recover():
    from orchestrator.compress.masks import GradualPruning

    schedule = GradualPruning(PassConfig(name=PassName.gradual_magnitude, sparsity=0.5), max_steps=120)
    assert (schedule.start, schedule.end) == (72, 100)
    assert [s for s in range(121) if schedule.due(s)] == [72, 77, 82, 87, 92, 97, 100]
    assert schedule.target(71) == 0 and schedule.target(100) == 0.5 and schedule.target(120) == 0.5
