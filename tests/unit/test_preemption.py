"""Stop signals to the driver: before training they end the command at once (Interrupted, its exit code by the
signal); while it trains they become a stop request; a second Ctrl-C ends it now, without a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from orchestrator.errors import Interrupted
from orchestrator.train.preemption import interrupt_on_signals


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 75), (signal.SIGINT, 130)])
def test_before_training_a_stop_signal_interrupts_with_its_exit_code(sig, code):
    before = signal.getsignal(sig)
    with pytest.raises(Interrupted) as stopped, interrupt_on_signals():
        os.kill(os.getpid(), sig)  # Python runs the handler before the next line
    assert stopped.value.signal_name == sig.name and stopped.value.exit_code == code
    assert signal.getsignal(sig) == before  # restored on the way out


SECOND_CTRL_C = """
import os, signal, sys, time
from pathlib import Path
from orchestrator.rundir import RunDir
from orchestrator.train.preemption import stop_on_signals
with stop_on_signals(RunDir(Path(sys.argv[1]))):
    os.kill(os.getpid(), signal.SIGINT)  # the first: a stop request, the run checkpoints at its next step
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's too: already stopping
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C: now
    time.sleep(30)
"""


def test_while_training_ctrl_c_requests_a_stop_and_a_second_ends_at_once_saying_so(tmp_path):
    result = subprocess.run([sys.executable, "-c", SECOND_CTRL_C, str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 130
    assert "SIGINT received: checkpointing at the next step, then stopping" in result.stdout
    assert "SIGTERM again: already stopping" in result.stderr
    assert "SIGINT again: stopping now, without a checkpoint" in result.stderr
    assert any(tmp_path.iterdir())  # the stop request the workers read
