"""Composition and validation: what a user types on the command line and what they get back."""

from __future__ import annotations

import pytest

from orchestrator.config.compose import compose, from_dict, to_dict, to_yaml
from orchestrator.config.schema import Offload, Precision
from orchestrator.errors import ConfigError
from tests.helpers import BAD_INPUTS


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


@pytest.mark.parametrize("override", ["optim.lr=inf", "optim.lr=-inf", "optim.lr=nan", "distill.temperature=inf",
                                      "train.grad_clip=nan"])
def test_non_finite_values_are_refused_for_every_float_key(tmp_path, capsys, override):
    from orchestrator import cli

    assert cli.main(["train", override, f"run_dir={tmp_path / 'run'}"]) == 2
    key, value = override.split("=")
    assert capsys.readouterr().err.strip() == f"error: {key}={float(value)}: must be a finite number"
    assert not (tmp_path / "run").exists()


def test_a_non_finite_value_inside_a_list_of_sections_is_named_by_its_index():
    from omegaconf import OmegaConf

    from orchestrator.config.compose import compose_dictconfig
    from orchestrator.config.validate import non_finite

    cfg = OmegaConf.to_object(compose_dictconfig(["compress=wanda50_int8", "compress.passes.0.sparsity=nan"]))
    assert non_finite(cfg) == ["compress.passes[0].sparsity=nan: must be a finite number"]
