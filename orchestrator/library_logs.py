"""Log lines of the libraries we import that a user can do nothing about, kept out of the terminal.

Installed from `orchestrator/__init__.py`, so it holds in the CLI and in every Ray worker
process (each imports this package through its setup hook) before torch, transformers or Ray
log anything. Only these known lines are touched; everything else a library logs still shows.
- torchao, imported by transformers whenever it is installed: warnings that its CUDA-only
  kernels (`_C_mxfp8`, `_C_cutlass_90a`) do not load on a CPU build, and torch's deprecation
  warning for the enums it registers with `torch.compile`.
- bitsandbytes' CPU backend (peft imports it whenever it is installed) failing to fetch an optional kernel
  from the Hugging Face Hub, which the workers keep offline, and the Hub client saying it is offline.
- Ray's notice that the local cluster it starts has token authentication on (the command wants it on; the
  warning that it is off stays).
- Ray Train's "Attempting to start training worker group ..." (the line after it says where the ranks
  started), logged by the controller, which a local run keeps in the driver (launch/worker_output.py drops
  the same line when a controller actor prints it).
- Ray Train's request to the autoscaling coordinator timing out on a loaded machine: Ray calls
  it "safe to ignore" and retries every 20 s, but logs a full traceback; one line stays.
"""

from __future__ import annotations

import logging

_AUTOSCALING_CLIENT = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


class _Without(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def install() -> None:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)
    logging.getLogger(_AUTOSCALING_CLIENT).addFilter(_NoTraceback())
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _Without("Token authentication is enabled for this Ray cluster"))
    logging.getLogger("ray.train.v2._internal.execution.worker_group.worker_group").addFilter(
        _Without("Attempting to start training worker group"))
