"""Training throughput as the loop measures it: tokens/s, MFU and HFU over the steps between logging steps
(evaluation and checkpoint time left out), the progress line people read, and the run's steady rate for
summary.json (what `orchestrator plan --calibrate` reads)."""

from __future__ import annotations

import statistics
import sys
import time

from orchestrator.plan import mfu


class Throughput:
    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float, world: int,
                 hfu_factor: float) -> None:
        self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
        self.world, self.hfu_factor = world, hfu_factor
        self.started = self._window_start = time.perf_counter()
        self._window_steps = 0
        self._paused = 0.0
        self.rates: list[float] = []
        """tokens/s of every logged window: the summary's steady rate is their median."""

    def step_done(self) -> None:
        self._window_steps += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def measure(self, step: int) -> dict:
        """The window that ends at this logging step: its record fields."""
        now = time.perf_counter()
        tokens_per_s = self._window_steps * self.tokens_per_step / (now - self._window_start)
        self.rates.append(tokens_per_s)
        utilization = mfu.utilization(self.flops_per_token, tokens_per_s, self.peak_flops, self.world)
        return {"tokens_per_s": tokens_per_s, "mfu": utilization, "hfu": utilization * self.hfu_factor,
                "tokens": step * self.tokens_per_step, "elapsed_s": now - self.started}

    def pause(self) -> None:
        """Evaluation and checkpoints follow: their time is not training time."""
        self._paused = time.perf_counter()

    def resume(self, logged: bool) -> None:
        """After a logging step a new window starts; otherwise the paused time is taken out of this one."""
        if logged:
            self._window_start, self._window_steps = time.perf_counter(), 0
        else:
            self._window_start += time.perf_counter() - self._paused

    def summary(self) -> dict:
        """The run's steady tokens/s (median of the logged windows after the first, which holds the warm-up),
        the step time and the MFU and HFU it gives."""
        steady = self.rates[1:] or self.rates
        if not steady:
            return {}
        tokens_per_s = statistics.median(steady)
        utilization = mfu.utilization(self.flops_per_token, tokens_per_s, self.peak_flops, self.world)
        return {"tokens_per_s": tokens_per_s, "step_time_s": self.tokens_per_step / tokens_per_s, "mfu": utilization,
                "hfu": utilization * self.hfu_factor}


def print_progress(step: int, max_steps: int, done: int, record: dict, elapsed: float) -> None:
    eta = elapsed / done * (max_steps - step)
    line = (
        f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%) | loss {record['loss']:.4f} | "
        f"lr {record['lr']:.2e} | {record['tokens_per_s']:,.0f} tok/s | "
        f"elapsed {_clock(elapsed)} | eta {_clock(eta)}"
    )
    for name in ("distill_loss", "data_loss", "reward_margin", "preference_accuracy", "val_loss", "val_accuracy",
                 "val_macro_f1", "val_preference_accuracy"):  # a task's, if it has them
        if name in record:
            line += f" | {name} {record[name]:.4f}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
