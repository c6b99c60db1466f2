"""The exception types users see. The CLI turns them into one line each and an exit code."""

from __future__ import annotations


class ConfigError(Exception):
    """One or more invalid config values or CLI inputs; nothing has started. Exit code 2."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class TrainingError(Exception):
    """The job started but failed (a worker raised, Ray gave up). Exit code 1."""

    exit_code = 1


class Preempted(Exception):
    """A stop signal arrived; a checkpoint of the current step was written. Rerun to resume."""

    exit_code = 75  # EX_TEMPFAIL: "try again later" — schedulers and scripts requeue on it


class Interrupted(BaseException):
    """SIGTERM or SIGINT before training started: nothing to checkpoint; the command ends at once. Exit 75 for
    SIGTERM (a scheduler's stop: requeue, and the rerun starts or resumes), 130 for Ctrl-C. A BaseException, as
    KeyboardInterrupt is: code that handles any Exception (libraries' retries and re-wrapping) lets it through."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 130 if signal_name == "SIGINT" else 75


class GateFailed(Exception):
    """A quality gate (compress.max_ppl_increase) was not met; the report was written. Exit code 1."""

    exit_code = 1
