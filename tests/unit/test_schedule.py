import pytest

from orchestrator.train.schedule import lr_factor


def test_warmup_rises_linearly_and_first_step_learns():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)


def test_cosine_decays_to_the_floor_and_stays_there():
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(150, 10, 100, 0.1) == pytest.approx(0.1)


def test_no_warmup_starts_at_peak():
    assert lr_factor(0, 0, 100, 0.0) == pytest.approx(1.0)
