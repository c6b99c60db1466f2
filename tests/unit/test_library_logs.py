"""Known library noise stays out of the terminal; the rest of what libraries log still shows."""

from __future__ import annotations

import logging

import pytest

import orchestrator  # noqa: F401  (installs the filters, as in every process that imports the package)
from orchestrator.library_logs import _AUTOSCALING_CLIENT

pytestmark = pytest.mark.unit


def test_ray_autoscaling_timeout_keeps_its_line_but_not_its_traceback(caplog):
    try:
        raise TimeoutError("Get timed out: some object(s) not ready.")
    except TimeoutError:
        logging.getLogger(_AUTOSCALING_CLIENT).warning("Failed to send resource request", exc_info=True)
    [record] = caplog.records
    assert record.getMessage() == "Failed to send resource request"
    assert "Traceback" not in caplog.text


def test_torchao_warnings_are_hidden_and_its_errors_are_not():
    logger = logging.getLogger("torchao")
    assert not logger.isEnabledFor(logging.WARNING)
    assert logger.isEnabledFor(logging.ERROR)
    assert logging.getLogger("orchestrator").isEnabledFor(logging.WARNING)
