"""What the workers print, as the command shows it: Ray forwards every worker's output to the driver; here the
lines a user can do nothing about are dropped, and no colour codes reach a file or a pipe.

Ray prefixes each forwarded line with `(RayTrainWorker pid=...)` in colour, and its log deduplication adds a
coloured `[repeated Nx across cluster]`, whether or not the output is a terminal. When standard output is not
a terminal (a file, a pipe, a scheduler's log), both come without colour: Ray's own switch
(RAY_COLOR_PREFIX=0) for the prefix, and its deduplicator's colouring function replaced for the rest.

Dropped, by what they say (each is printed by a library in every worker, on every run):
- DeepSpeed's `DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully`, printed by every rank
  when it loads the CPU communication op (it was built once, before the workers started);
- Ray Train's "Attempting to start training worker group ..." and each worker's "Setting up process group
  for: env:// ..." (the lines that follow them say where the ranks started);
- Ray's note on its own log deduplication ("Ray deduplicates logs by default ...", once per command).
Progress bars of transformers (writing and loading model shards) are switched off at their source, in the
workers' environment (train/driver.py `worker_env`), and datasets' bars around reading local files
(data/corpus.py); everything else a worker prints is shown as Ray prints it.
"""

from __future__ import annotations

import functools
import os
import re
import sys

NOISE = (re.compile(r"^DeepSpeed \S+ built successfully$"),
         re.compile(r"^Attempting to start training worker group of size \d+ with the following resources"),
         re.compile(r"^Setting up process group for: "))


def install() -> None:
    """In the driver, once Ray is initialised with log_to_driver (Ray 2.60's stdstream dispatcher)."""
    from ray._private import ray_logging
    from ray._private import worker as ray_worker
    from ray.util.debug import log_once

    if not sys.stdout.isatty():
        os.environ["RAY_COLOR_PREFIX"] = "0"  # read by Ray at every line it prints
        ray_logging._color = lambda message: message
    log_once("log_dedup_warning")  # Ray appends its note to the first repeated line only if this is the first call
    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
    show = functools.partial(ray_worker.print_to_stdstream, ignore_prefix=ignore_prefix)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", lambda data: show(kept(data)))


def kept(data: dict) -> dict:
    """The batch of lines without the noise."""
    lines = [line for line in data.get("lines", []) if not any(noise.match(line) for noise in NOISE)]
    return {**data, "lines": lines}
