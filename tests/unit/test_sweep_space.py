"""The search space in Hydra's sweep grammar, and the sweep settings refused before anything starts."""

import pytest

from orchestrator.config import overrides
from orchestrator.config.schema import SearchAlgorithm
from orchestrator.sweep import space
from orchestrator.sweep.driver import _check_settings


def test_sweep_expressions_are_split_from_the_overrides_every_trial_shares():
    plain, swept = overrides.split_overrides(["optim.lr=tag(log,interval(1e-4,3e-2))", "train.max_steps=100",
                                          "zero=2,3", "optim.warmup_steps=choice(0,10,20)", "model=tiny"])
    assert plain == ["train.max_steps=100", "model=tiny"]
    assert swept == {"optim.lr": "tag(log,interval(1e-4,3e-2))", "zero": "2,3",
                     "optim.warmup_steps": "choice(0,10,20)"}


def test_each_expression_becomes_values_or_a_range():
    params, problems = space.parse({"optim.lr": "tag(log,interval(1e-4,3e-2))", "zero": "2,3",
                                    "optim.warmup_steps": "range(0,30,10)"})
    assert problems == []
    lr, zero, warmup = params
    assert (lr.values, lr.low, lr.high, lr.log) == (None, 1e-4, 3e-2, True)
    assert zero.values == [2, 3] and warmup.values == [0, 10, 20]
    assert space.grid_size([zero, warmup]) == 6


def test_a_bad_expression_is_one_line_naming_it():
    _, problems = space.parse({"optim.lr": "interval(1e-4"})
    assert problems == ["sweep.params.optim.lr=interval(1e-4: not a sweep expression; use choice(a,b), a,b, "
                        "range(start,stop,step), interval(low,high) or tag(log,interval(low,high))"]


def test_a_grid_cannot_search_an_interval_and_a_log_scale_needs_positive_bounds():
    params, _ = space.parse({"optim.lr": "tag(log,interval(0,1))"})
    problems = space.check(params, SearchAlgorithm.grid)
    assert any("a grid needs listed values" in p for p in problems)
    assert any("low > 0 on a log scale" in p for p in problems)


def test_float_values_reach_the_trial_exactly():
    assert overrides.as_override("optim.lr", 0.0011205837185064174) == "optim.lr=0.0011205837185064174"
    assert overrides.as_override("zero", 3) == "zero=3"


@pytest.mark.parametrize(("overrides", "message"), [
    (["sweep.num_trials=4"], "sweep.num_trials=4: must be null with sweep.algorithm=grid (a grid runs every "
                             "combination: 2 trials)"),
    (["sweep.algorithm=optuna"], "sweep.num_trials=null: sweep.algorithm=optuna needs a number of trials >= 1"),
    (["sweep.scheduler=asha", "sweep.asha.grace_steps=500", "train.max_steps=100"],
     "sweep.asha.grace_steps=500: must be between 1 and train.max_steps=100"),
    (["sweep.scheduler=asha", "train.eval_every=0"], "train.eval_every=0: ASHA judges trials at evaluations"),
    (["sweep.metric=accuracy"], "sweep.metric=accuracy: must be one of val_loss, val_ppl, loss (what task=clm "
                                "reports)"),
    (["sweep.metric=val_accuracy", "sweep.mode=max"], "sweep.metric=val_accuracy: must be one of val_loss, val_ppl, "
                                                      "loss (what task=clm reports)"),
])
def test_sweep_settings_that_cannot_work_are_refused(compose_tiny, overrides, message):
    cfg = compose_tiny(*overrides)
    params, _ = space.parse({"optim.lr": "1e-3,3e-3"})
    problems = _check_settings(cfg, params)
    assert any(p.startswith(message) for p in problems), problems


@pytest.mark.parametrize("metric", ["val_accuracy", "val_macro_f1"])
def test_a_classifiers_metrics_are_valid_sweep_metrics_with_mode_max(compose_tiny, metric, tmp_path):
    data = tmp_path / "labelled.jsonl"
    data.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    cfg = compose_tiny("task=classify", "model.arch=bert", "data=local", f"data.path={data}", "sweep=lr_search",
                       f"sweep.metric={metric}", "sweep.mode=max")
    params, _ = space.parse(cfg.sweep.params)
    assert _check_settings(cfg, params) == []


def test_the_lr_search_preset_is_a_valid_optuna_asha_sweep(compose_tiny):
    cfg = compose_tiny("sweep=lr_search")
    params, problems = space.parse(cfg.sweep.params)
    assert problems == [] and _check_settings(cfg, params) == []
    assert [p.key for p in params] == ["optim.lr", "optim.warmup_steps"]


def test_distillation_and_preference_metrics_are_valid_sweep_metrics(compose_tiny, tmp_path):
    """Every task has its entry: a task=distill sweep once failed with a KeyError before checking anything."""
    from tests.helpers import causal_lm_and_preferences

    folder, prefs = causal_lm_and_preferences(tmp_path)
    for task, metric in (("task=distill", "val_loss"), ("task=dpo", "val_preference_accuracy"),
                         ("task=dpo", "val_reward_margin")):
        extra = ([f"distill.teacher_path={folder}"] if task == "task=distill" else
                 [f"model.pretrained_path={folder}", "data=local", f"data.path={prefs}"])
        cfg = compose_tiny(task, *extra, "sweep=lr_search", f"sweep.metric={metric}", "sweep.mode=max")
        params, _ = space.parse(cfg.sweep.params)
        assert _check_settings(cfg, params) == [], (task, metric)
