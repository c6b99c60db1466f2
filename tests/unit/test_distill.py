"""Distillation without a cluster: the loss is the GKD paper's divergence (TRL's formula), a student kept from
every k-th teacher layer holds exactly those layers, the plan counts the teacher per rank, bad distill.* input is
refused in one line before anything starts, and `compress.passes=[...]` takes pipelines and passes by name."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator import cli
from orchestrator.config.compose import compose, to_yaml
from orchestrator.data.tokenizer import train_bpe

TEXTS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"] * 20


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 4-layer GPT-2 with its own tokenizer, as a model folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("teacher")
    tokenizer = train_bpe(TEXTS, 300)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=4,
                               n_head=4)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("loss,beta", [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.5)])
def test_the_divergence_is_trls_generalized_jsd(loss, beta):
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    from orchestrator.tasks.distill import _BETA, divergence

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 7, 11), torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100  # a prompt: no loss there
    assert _BETA[loss] == beta
    ours = divergence(student, teacher, labels, beta, 2.0, tokens=5)
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, temperature=2.0,
                                             num_items_in_batch=5)
    assert torch.allclose(ours, theirs, atol=1e-6) and ours > 0
    assert divergence(teacher, teacher, labels, beta, 2.0, tokens=5).abs() < 1e-6  # nothing to learn from itself


def test_a_student_from_every_second_teacher_layer_holds_exactly_those_layers(teacher, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from orchestrator.models.student_init import kept_name, student_folder

    assert kept_name("transformer.h.6.attn.c_attn.weight", 2) == "transformer.h.3.attn.c_attn.weight"
    assert kept_name("model.layers.3.mlp.up_proj.weight", 2) is None
    assert kept_name("transformer.wte.weight", 2) == "transformer.wte.weight"
    folder = student_folder(teacher, 2, tmp_path)
    assert student_folder(teacher, 2, tmp_path) == folder  # written once, then reused
    student = AutoModelForCausalLM.from_pretrained(str(folder))
    assert student.config.n_layer == 2
    stored = load_file(str(teacher / "model.safetensors"))
    for name, value in student.state_dict().items():
        source = name.replace(".h.1.", ".h.2.")
        if source in stored:
            assert torch.equal(value, stored[source]), name


def test_the_plan_holds_the_whole_teacher_per_rank_below_zero3_and_a_share_at_zero3(teacher):
    from transformers import AutoModelForCausalLM

    from orchestrator.plan.plan import make_plan

    held = {}
    for zero in ("2", "3"):
        cfg = compose(["task=distill", f"distill.teacher_path={teacher}", f"zero={zero}", "cluster.num_workers=2",
                       "train.precision=fp32", "model=tiny"])
        held[zero] = make_plan(cfg).memory["teacher"]
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(teacher)).parameters())
    assert held["2"] == 4 * params and held["3"] == pytest.approx(2 * params, abs=1)


def test_the_student_reads_the_teachers_tokenizer_and_gets_its_vocabulary(teacher):
    cfg = compose(["task=distill", f"distill.teacher_path={teacher}", "model=tiny"])
    assert cfg.data.tokenizer_path == str(teacher)
    assert cfg.model.vocab_size == json.loads((teacher / "config.json").read_text())["vocab_size"]
    halved = compose(["task=distill", f"distill.teacher_path={teacher}", "distill.init=teacher_layers"])
    assert (halved.model.arch.value, halved.model.num_layers, halved.model.hidden_size) == ("gpt2", 2, 32)


@pytest.fixture(scope="module")
def misfits(tmp_path_factory):
    """Another tokenizer, and an encoder: neither can stand in for the teacher's."""
    from transformers import BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("misfits")
    train_bpe(["a different corpus entirely, with other merges"] * 30, 280).save_pretrained(str(root / "other"))
    BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(str(root / "bert"))
    return {"other": root / "other", "bert": root / "bert"}


@pytest.mark.parametrize(("overrides", "message"), [
    (["task=distill"], "distill.teacher_path: required with task=distill"),
    (["task=distill", "distill.teacher_path={teacher}", "distill.temperature=0"],
     "distill.temperature=0.0: must be > 0"),
    (["task=distill", "distill.teacher_path={teacher}", "distill.alpha=1.5"], "distill.alpha=1.5: must be in [0, 1]"),
    (["distill.teacher_path={teacher}"], "only task=distill has a teacher"),
    (["task=distill", "distill.teacher_path={teacher}", "data.tokenizer_path={other}"],
     "its tokenizer is not the student's"),
    (["task=distill", "distill.teacher_path={bert}"], "not a causal LM"),
], ids=["no-teacher", "temperature", "alpha", "teacher-without-distill", "other-tokenizer", "encoder-teacher"])
def test_bad_distillation_input_is_refused_before_anything_starts(teacher, misfits, tmp_path, capsys, overrides,
                                                                  message):
    args = [o.format(teacher=teacher, **misfits) for o in overrides]
    assert cli.main(["train", *args, f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_compress_takes_pipelines_and_passes_by_name(tmp_path):
    from orchestrator.compress.command import compose as compress_compose
    from orchestrator.errors import ConfigError

    (tmp_path / "config.yaml").write_text(to_yaml(compose(["model=tiny"])))
    cfg, _ = compress_compose([f"run_dir={tmp_path}", "compress.passes=[wanda50, distill, int8_dynamic]"])
    assert cfg.compress.name == "wanda50_distill_int8_dynamic"
    assert [(p.name.value, p.sparsity) for p in cfg.compress.passes] == [
        ("wanda", 0.5), ("distill", 0.5), ("int8_dynamic", 0.5)]
    cfg, _ = compress_compose([f"run_dir={tmp_path}", "compress.passes=[wanda50, distill]",
                               "compress.passes.1.steps=7"])
    assert [p.steps for p in cfg.compress.passes] == [100, 7]  # a pass's key set by its index, after the names
    with pytest.raises(ConfigError, match="compress.passes.1.steps=abc: Value 'abc'"):
        compress_compose([f"run_dir={tmp_path}", "compress.passes=[wanda50, distill]", "compress.passes.1.steps=abc"])
    with pytest.raises(ConfigError, match="trains after quantization"):
        from orchestrator.compress.command import compress

        compress([f"run_dir={tmp_path}", "compress.passes=[int8_dynamic, distill]"])
