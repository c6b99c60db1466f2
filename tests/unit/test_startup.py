"""The start-up breakdown: phases add up to the time to the first step."""

from __future__ import annotations

import pickle

from orchestrator.train.startup import Startup


def test_phases_are_the_time_since_the_mark_before_and_add_up():
    startup = Startup(100.0, [("prepare", 100.5), ("cluster", 103.0)])
    worker = pickle.loads(pickle.dumps(startup))  # what the driver hands to rank 0, in the payload
    worker.marks += [("worker_group", 109.0), ("imports", 109.8), ("first_step", 112.0)]
    breakdown = worker.breakdown()
    assert breakdown == {"prepare_s": 0.5, "cluster_s": 2.5, "worker_group_s": 6.0, "imports_s": 0.8,
                         "first_step_s": 2.2, "time_to_first_step_s": 12.0}
    assert worker.describe().startswith("first step 12.0s after the command started: prepare 0.5s, cluster 2.5s")


def test_of_this_command_counts_from_the_process_start():
    import time

    startup = Startup.of_this_command()
    assert startup.process_start < time.time()
