"""Known library noise stays out of the terminal; the rest of what libraries log still shows."""

from __future__ import annotations

import io
import logging

import pytest

import orchestrator  # noqa: F401  (installs the filters, as in every process that imports the package)
from orchestrator.library_logs import _AUTOSCALING_CLIENT

pytestmark = pytest.mark.unit


def test_ray_autoscaling_timeout_keeps_its_line_but_not_its_traceback():
    logger = logging.getLogger(_AUTOSCALING_CLIENT)  # Ray stops its loggers propagating: listen on this one
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        try:
            raise TimeoutError("Get timed out: some object(s) not ready.")
        except TimeoutError:
            logger.warning("Failed to send resource request", exc_info=True)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "Failed to send resource request\n"


def test_torchao_warnings_are_hidden_and_its_errors_are_not():
    logger = logging.getLogger("torchao")
    assert not logger.isEnabledFor(logging.WARNING)
    assert logger.isEnabledFor(logging.ERROR)
    assert logging.getLogger("orchestrator").isEnabledFor(logging.WARNING)
