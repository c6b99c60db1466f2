"""Where the time to the first optimizer step goes, phase by phase, from the command's process start.

The driver marks its phases (data preparation, cluster start or join), hands its marks to the
workers in the payload, and rank 0 adds its own (worker group start, imports, data load, model
build, engine initialize, first step). Each phase's duration is the time since the mark before it,
so the durations add up to the time to the first step. Marks are wall-clock times (time.time()):
the driver and rank 0 are different processes, possibly on different machines.
"""

from __future__ import annotations

import time

WORKER_GROUP = "worker_group"



class Startup:
    def __init__(self, process_start: float, marks: list[tuple[str, float]] | None = None):
        self.process_start = process_start
        self.marks = list(marks or [])

    @classmethod
    def of_this_command(cls) -> Startup:
        """Measured from when the OS started the command's process (interpreter start-up and imports included):
        this one, or the one a resident launcher's copy runs the command for (launch/resident.py)."""
        import os

        import psutil

        from orchestrator.launch.resident import COMMAND_STARTED_ENV

        return cls(float(os.environ.get(COMMAND_STARTED_ENV) or psutil.Process().create_time()))

    def mark(self, phase: str) -> None:
        """`phase` has just ended."""
        self.marks.append((phase, time.time()))

    def breakdown(self) -> dict[str, float]:
        """{"<phase>_s": seconds, ..., "time_to_first_step_s": total}, phases in the order they ran."""
        result, previous = {}, self.process_start
        for phase, at in self.marks:
            result[f"{phase}_s"] = round(result.get(f"{phase}_s", 0.0) + at - previous, 3)
            previous = at
        result["time_to_first_step_s"] = round(previous - self.process_start, 3)
        return result

    def describe(self) -> str:
        parts = self.breakdown()
        total = parts.pop("time_to_first_step_s")
        phases = ", ".join(f"{name[:-2].replace('_', ' ')} {seconds:.1f}s" for name, seconds in parts.items())
        return f"first step {total:.1f}s after the command started: {phases}"
