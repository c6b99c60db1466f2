"""Composition and validation: what a user types on the command line and what they get back."""

from __future__ import annotations

import pytest

from orchestrator.config.compose import compose, from_dict, to_dict, to_yaml
from orchestrator.config.schema import Offload, Precision
from orchestrator.errors import ConfigError


def test_defaults_compose_to_the_documented_job():
    cfg = compose([])
    assert cfg.model.name == "tiny"
    assert cfg.zero.stage == 2
    assert cfg.cluster.num_workers == 2
    assert cfg.logger.mode.value == "offline"
    assert cfg.data.path is None  # the offline stdlib corpus


def test_overrides_pick_groups_and_set_values():
    cfg = compose(["model=gpt2-124m", "zero=3", "train.max_steps=200", "optim.lr=3e-4", "train.precision=bf16"])
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.vocab_size) == (12, 768, 50257)
    assert cfg.zero.stage == 3
    assert cfg.train.max_steps == 200
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.precision is Precision.bf16


def test_zero_3_offload_moves_optimizer_and_params_to_cpu():
    cfg = compose(["zero=3_offload"])
    assert (cfg.zero.stage, cfg.zero.offload_optimizer, cfg.zero.offload_param) == (3, Offload.cpu, Offload.cpu)


BAD_INPUTS = [
    (["zero=7"], "zero=7", "choose one of: 0, 1, 2, 3, 3_offload"),
    (["model=nosuch"], "model=nosuch", "gpt2-124m"),
    (["train.micro_batch_size=-1"], "train.micro_batch_size=-1", ">= 1"),
    (["data.path=/nonexistent"], "data.path=/nonexistent", "no such file"),
    (["optim.lr=abc"], "optim.lr=abc", "expected a float"),
    (["train.seq_len=1.5"], "train.seq_len=1.5", "expected an integer"),
    (["train.precision=fp8"], "train.precision=fp8", "fp32, bf16, fp16"),
    (["train.nokey=1"], "train.nokey", "unknown key"),
    (["+surprise=1"], "surprise", "unknown key"),
    (["data=local"], "data.path", "required"),
    (["optim.lr=0"], "optim.lr=0", "> 0"),
    (["train.max_steps=0"], "train.max_steps=0", ">= 1"),
    (["cluster.num_workers=0"], "cluster.num_workers=0", ">= 1"),
    (["zero=2", "zero.offload_param=cpu"], "zero.offload_param=cpu", "zero.stage=3"),
    (["zero=0", "zero.offload_optimizer=cpu"], "zero.offload_optimizer=cpu", "zero.stage >= 1"),
    (["model.hidden_size=100", "model.num_heads=3"], "model.hidden_size=100", "divisible"),
    (["data.val_fraction=0.9"], "data.val_fraction=0.9", "(0, 0.5]"),
    (["train.precision=fp16", "cluster.gpus_per_worker=0"], "train.precision=fp16", "needs CUDA"),
    (["model.pretrained_path=/nonexistent"], "model.pretrained_path=/nonexistent", "config.json"),
    (["train.max_steps=ten"], "train.max_steps=ten", "expected an integer"),
    (["optim.beta2=1.5"], "optim.beta2=1.5", "[0, 1)"),
    (["model=gpt2-124m", "train.seq_len=2048"], "model.max_position_embeddings=1024", "train.seq_len=2048"),
    (["zero=3", "zero.offload_param=nvme", "zero.nvme_path=/"], "zero.offload_param=nvme", "async_io"),
    (["cluster.gpu_memory_gb=0"], "cluster.gpu_memory_gb=0", "> 0 GB"),
    (["zero=3", "zero.reduce_bucket_size=0"], "zero.reduce_bucket_size=0", ">= 1 element"),
    (["cluster=nosuch"], "cluster=nosuch", "k8s, local, ray, slurm"),
    (["data.sources=[{path: /nonexistent}]"], "data.sources[0].path=/nonexistent", "no such file"),
    ([f"data.sources=[{{path: {__file__}, weight: 0}}]"], "data.sources[0].weight=0", "> 0"),
    ([f"data.sources=[{{path: {__file__}}}]", "data.streaming=true"], "data.streaming=true", "mixture"),
    ([f"data.sources=[{{path: {__file__}}}]", f"data.path={__file__}"], f"data.path={__file__}", "must be null"),
    (["data.num_proc=0"], "data.num_proc=0", ">= 1 or null"),
    (["data.tokenize_on=ray"], "data.tokenize_on=ray", "cluster=ray, slurm or k8s"),
]


@pytest.mark.parametrize(("overrides", "key", "hint"), BAD_INPUTS, ids=[" ".join(o) for o, _, _ in BAD_INPUTS])
def test_bad_values_are_refused_with_one_line_naming_key_and_fix(overrides, key, hint):
    with pytest.raises(ConfigError) as caught:
        compose(overrides)
    (problem,) = caught.value.problems
    assert "\n" not in problem
    assert problem.startswith(key)
    assert hint in problem


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as caught:
        compose(["train.micro_batch_size=0", "optim.lr=-1", "train.grad_accum=0"])
    assert len(caught.value.problems) == 3


def test_existing_run_dir_is_refused_when_resume_is_never(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run and train.resume=never"):
        compose([f"run_dir={tmp_path}", "train.resume=never"])
    compose([f"run_dir={tmp_path}"])  # resume=auto (the default) continues it


def test_config_round_trips_through_plain_dict_for_workers():
    cfg = compose(["zero=3_offload", "train.precision=bf16"])
    assert from_dict(to_dict(cfg)) == cfg
    assert "offload_param: cpu" in to_yaml(cfg)
