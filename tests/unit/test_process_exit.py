"""A command line's end skips Python's module teardown but nothing a command relies on."""

import os
import subprocess
import sys

SCRIPT = """
import atexit, concurrent.futures, sys, threading, time
from orchestrator.launch.process_exit import end_process

atexit.register(lambda: print("exit hook ran", file=sys.stderr))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", file=sys.stderr))).start()
pool = concurrent.futures.ThreadPoolExecutor(1)  # its idle worker thread must not hold the exit
pool.submit(time.sleep, 0.1)
print("buffered, not flushed", end="")
end_process(3)
"""


def test_the_exit_code_threads_exit_hooks_and_buffered_output_all_survive():
    buffered = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=buffered)
    assert done.returncode == 3
    assert done.stdout == "buffered, not flushed"
    assert done.stderr.splitlines() == ["thread finished", "exit hook ran"]
