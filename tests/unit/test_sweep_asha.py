"""ASHA's verdicts as a sweep's trials see them: a stopped trial is asked to finish, never killed."""

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from orchestrator.rundir import EARLY_STOP, SweepDir
from orchestrator.sweep.events import EarlyStopByRequest


def _scheduler(compose_tiny, tmp_path):
    cfg = compose_tiny("train.max_steps=10", "sweep.scheduler=asha", "sweep.asha.grace_steps=2",
                       "sweep.asha.reduction_factor=2")
    scheduler = EarlyStopByRequest.for_sweep(cfg, SweepDir(tmp_path))
    scheduler.set_search_properties("val_loss", "min")
    return scheduler


def test_a_trial_that_reaches_its_last_step_is_left_to_finish_its_summary(compose_tiny, tmp_path):
    scheduler = _scheduler(compose_tiny, tmp_path)
    trial = SimpleNamespace(trial_id="t0")
    scheduler.on_trial_add(None, trial)
    decision = scheduler.on_trial_result(None, trial, {"step": 10, "val_loss": 5.0})
    assert decision == TrialScheduler.CONTINUE
    assert SweepDir(tmp_path).trial("t0").stop_request() is None


def test_a_trial_ASHA_cuts_is_asked_once_to_stop_at_its_next_step(compose_tiny, tmp_path, capsys):
    scheduler = _scheduler(compose_tiny, tmp_path)
    good, bad = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="bad")
    for trial in (good, bad):
        scheduler.on_trial_add(None, trial)
        SweepDir(tmp_path).trial(trial.trial_id).path.mkdir(parents=True)
    scheduler._trial_info["bad"] = scheduler._trial_info["good"]  # one bracket, so the two are ranked together
    scheduler.on_trial_result(None, good, {"step": 2, "val_loss": 5.0})
    decisions = [scheduler.on_trial_result(None, bad, {"step": step, "val_loss": 9.0}) for step in (2, 3)]
    assert decisions == [TrialScheduler.CONTINUE] * 2
    assert SweepDir(tmp_path).trial("bad").stop_request() == EARLY_STOP
    assert capsys.readouterr().out.count("trial bad ASHA stops it") == 1
