"""What the tests share: the shrunk job, running the CLI, reading a run directory, waiting for a step,
finding a job's processes, building a session product once per test run, and the table of bad inputs both
the config layer and the CLI refuse.
Test modules import from here (and from tests/conftest.py's fixtures), never from one another."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psutil
import pytest

from orchestrator.rundir import RunDir

TINY = [
    "model=tiny",
    "data.max_bytes=600000",
    "data.vocab_size=512",
    "train.seq_len=64",
    "train.micro_batch_size=4",
    "train.log_every=1",
    "train.eval_batches=4",
]
"""The tiny model on the default corpus, shrunk so a distributed test takes seconds of training."""

LR_GRID = ["1e-2", "3e-3", "1e-4"]
"""The session's learning-rate grid (tests/e2e/conftest.py `lr_grid`), best first, so ASHA has a later, worse
trial to stop."""


def orchestrator(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`orchestrator ARGS` in a subprocess, as a user runs it; output captured."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def command(*args: str) -> list[str]:
    """The argv of `orchestrator ARGS`, for tests that start it with Popen (the `spawn` fixture)."""
    return [sys.executable, "-m", "orchestrator", *args]


def metrics(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).rows()


def events(run_dir: Path) -> list[str]:
    return [event["event"] for event in RunDir(run_dir).events()]


def summary(run_dir: Path) -> dict:
    return json.loads(RunDir(run_dir).summary_file.read_text())


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, limit: float = 300) -> None:
    """Until metrics.jsonl reaches `step`; fails at once if the run ends first, with its output."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rows = metrics(run_dir)
        if rows and rows[-1]["step"] >= step:
            return
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the run ended (exit {process.returncode}) before the fault was injected:\n"
                                 f"{output[-3000:]}")
        time.sleep(0.02)
    raise TimeoutError(f"step {step} not reached")


def train_workers(driver: subprocess.Popen) -> list[psutil.Process]:
    """This job's Ray Train workers: descendants of its driver (the embedded raylet is its child)."""
    found = []
    for proc in psutil.Process(driver.pid).children(recursive=True):
        try:
            if any("RayTrainWorker" in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def sigkill_a_worker_and_finish(run_dir: Path, process: subprocess.Popen, step: int, rank: int = 1,
                                limit: float = 300) -> str:
    """Once the run (started with train.max_failures >= 1) reaches `step`, SIGKILL one rank's worker; the job
    must restart once and finish: its output."""
    import signal

    wait_for_step(run_dir, step, process, limit)
    victims = train_workers(process)
    assert len(victims) == 2
    victims[rank].send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    assert events(run_dir) == ["start", "resume", "finished"]  # exactly one restart
    return output


def assert_same_losses(run_dir: Path, reference: Path, steps: int) -> None:
    """Every step logged once, each loss within 1e-6 of the uninterrupted reference run's."""
    rows, expected = metrics(run_dir), metrics(reference)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    for row, ref in zip(rows, expected, strict=True):
        assert row["loss"] == pytest.approx(ref["loss"], abs=1e-6), row["step"]


def job_processes(driver: subprocess.Popen) -> list[psutil.Process]:
    """Everything the driver started: the embedded Ray cluster, its workers, the reaper."""
    return psutil.Process(driver.pid).children(recursive=True)


def survivors(processes: list[psutil.Process], within: float) -> list[psutil.Process]:
    """The processes still alive (not zombies) after waiting up to `within` seconds for them to end."""
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


class MachineShare:
    """How the two xdist processes share the machine. Every distributed and end-to-end test holds a shared
    lock while it runs; a test marked `alone` (a timing or memory bound) holds it exclusively, so nothing heavy
    runs beside it, and so does the making of a session product whose timings such a test reads. A turnstile
    lock, held while waiting for the exclusive one, keeps new shared holders from starving it. Without xdist
    every method does nothing."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self._files: list | None = None

    def attach(self, shared_folder: Path) -> None:
        """Open the two lock files in the folder every xdist process of this run shares (once)."""
        if self._files is None and "PYTEST_XDIST_WORKER" in os.environ:
            self._files = [open(shared_folder / f"machine-{name}.lock", "a+")  # noqa: SIM115 (held all session)
                           for name in ("turnstile", "share")]

    def _lock(self, which: int, how: int) -> None:
        import fcntl

        if self._files:
            fcntl.flock(self._files[which], how)

    @contextmanager
    def shared(self):
        import fcntl

        self._lock(0, fcntl.LOCK_EX)
        self._lock(1, fcntl.LOCK_SH)
        self._lock(0, fcntl.LOCK_UN)
        self.mode = "shared"
        try:
            yield
        finally:
            self._lock(1, fcntl.LOCK_UN)
            self.mode = None

    @contextmanager
    def alone(self):
        """Exclusive; from inside `shared`, the shared lock is given up first and taken again after."""
        import fcntl

        if self.mode == "alone":
            yield
            return
        before = self.mode
        self._lock(1, fcntl.LOCK_UN)
        self._lock(0, fcntl.LOCK_EX)
        self._lock(1, fcntl.LOCK_EX)
        self.mode = "alone"
        try:
            yield
        finally:
            self._lock(1, fcntl.LOCK_SH if before == "shared" else fcntl.LOCK_UN)
            self._lock(0, fcntl.LOCK_UN)
            self.mode = before


MACHINE = MachineShare()


def once_per_run(tmp_path_factory, name: str, produce: Callable[[Path], Any], alone: bool = False) -> Any:
    """`produce(folder)` once per test run, also when xdist splits the session over processes: the first
    process to ask builds it under a file lock, the others wait and read what it returned (a failure too).
    `alone`: built with nothing heavy beside it (tests read its timings)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return produce(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each process's own basetemp
    record = shared / f"{name}.pickle"
    if not record.exists():
        with MACHINE.alone() if alone else nullcontext(), FileLock(str(record) + ".lock"):
            if not record.exists():
                folder = shared / name
                folder.mkdir(exist_ok=True)
                try:
                    record.write_bytes(pickle.dumps(("ok", produce(folder))))
                except BaseException as failure:
                    record.write_bytes(pickle.dumps(("failed", f"{type(failure).__name__}: {failure}")))
                    raise
    outcome, value = pickle.loads(record.read_bytes())
    if outcome == "failed":
        pytest.fail(f"{name}, built by another xdist process, failed: {value}")
    return value


# (overrides, what the one error line must name, the hint it must give): refused by the config layer
# (tests/unit/test_config.py) and by the CLI before anything starts (tests/e2e/test_cli.py).
BAD_INPUTS = [
    (["zero=7"], "zero=7", "choose one of: 0, 1, 2, 3, 3_offload"),
    (["model=nosuch"], "model=nosuch", "gpt2-124m"),
    (["train.micro_batch_size=-1"], "train.micro_batch_size=-1", ">= 1"),
    (["data.path=/nonexistent"], "data.path=/nonexistent", "no such file"),
    (["optim.lr=abc"], "optim.lr=abc", "expected a float"),
    (["train.seq_len=1.5"], "train.seq_len=1.5", "expected an integer"),
    (["train.precision=fp8"], "train.precision=fp8", "fp32, bf16, fp16"),
    (["train.nokey=1"], "train.nokey", "unknown key"),
    (["+surprise=1"], "surprise", "unknown key"),
    (["data=local"], "data.path", "required"),
    (["optim.lr=0"], "optim.lr=0", "> 0"),
    (["train.max_steps=0"], "train.max_steps=0", ">= 1"),
    (["cluster.num_workers=0"], "cluster.num_workers=0", ">= 1"),
    (["zero=2", "zero.offload_param=cpu"], "zero.offload_param=cpu", "zero.stage=3"),
    (["zero=0", "zero.offload_optimizer=cpu"], "zero.offload_optimizer=cpu", "zero.stage >= 1"),
    (["model.hidden_size=100", "model.num_heads=3"], "model.hidden_size=100", "divisible"),
    (["data.val_fraction=0.9"], "data.val_fraction=0.9", "(0, 0.5]"),
    (["train.precision=fp16", "cluster.gpus_per_worker=0"], "train.precision=fp16", "needs CUDA"),
    (["model.pretrained_path=/nonexistent"], "model.pretrained_path=/nonexistent", "config.json"),
    (["train.max_steps=ten"], "train.max_steps=ten", "expected an integer"),
    (["optim.beta2=1.5"], "optim.beta2=1.5", "[0, 1)"),
    (["model=gpt2-124m", "train.seq_len=2048"], "model.max_position_embeddings=1024", "train.seq_len=2048"),
    (["zero=3", "zero.offload_param=nvme", "zero.nvme_path=/"], "zero.offload_param=nvme", "async_io"),
    (["cluster.gpu_memory_gb=0"], "cluster.gpu_memory_gb=0", "> 0 GB"),
    (["zero=3", "zero.reduce_bucket_size=0"], "zero.reduce_bucket_size=0", ">= 1 element"),
    (["cluster=nosuch"], "cluster=nosuch", "k8s, local, ray, slurm"),
    (["data.sources=[{path: /nonexistent}]"], "data.sources[0].path=/nonexistent", "no such file"),
    ([f"data.sources=[{{path: {__file__}, weight: 0}}]"], "data.sources[0].weight=0", "> 0"),
    ([f"data.sources=[{{path: {__file__}}}]", "data.streaming=true"], "data.streaming=true", "mixture"),
    ([f"data.sources=[{{path: {__file__}}}]", f"data.path={__file__}"], f"data.path={__file__}", "must be null"),
    (["data.num_proc=0"], "data.num_proc=0", ">= 1 or null"),
    (["data.tokenize_on=ray"], "data.tokenize_on=ray", "cluster=ray, slurm or k8s"),
]


REFERENCE_STEPS = 30
REFERENCE_JOB = [*TINY, "data.max_bytes=20000", "train.micro_batch_size=8", "train.precision=fp32",
                 f"train.max_steps={REFERENCE_STEPS}", "train.ckpt_every=5", "train.keep_checkpoints=6",
                 "train.eval_every=0", "train.log_every=1"]
"""The session's reference job (tests/e2e/conftest.py `reference`): 2 workers, fp32, a fixed seed, every
checkpoint of steps 5-30 kept. Small data: 9 batches per rank per epoch, so step 10 onwards is the second,
reshuffled pass. Fault-tolerance, elastic and compress tests compare with it or start from its checkpoints."""

SECRETS = {"WANDB_API_KEY": "sentinel-wandb-4f9a", "HF_TOKEN": "sentinel-hf-8c21",
           "MY_SERVICE_PASSWORD": "sentinel-pw-77d0"}
"""In the reference run's environment: none of these values may reach its run directory or Ray's logs."""


SENTIMENT_WORDS = {"positive": ["great", "wonderful", "loved", "excellent", "fun"],
                   "negative": ["awful", "boring", "hated", "terrible", "dull"],
                   "neutral": ["okay", "average", "fine", "plain", "usual"]}


def labelled_rows(count: int, seed: int) -> list[dict]:
    """Film reviews of three labels, each told by one word among fillers: learnable in a few dozen steps."""
    import random

    rng = random.Random(seed)
    filler = ["the", "movie", "was", "a", "plot", "actors", "story", "film", "it", "really", "quite", "and"]
    rows = []
    for _ in range(count):
        label = rng.choice(sorted(SENTIMENT_WORDS))
        words = rng.sample(filler, 5) + [rng.choice(SENTIMENT_WORDS[label])] + rng.sample(filler, 3)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def on_two_ranks(target: Callable, *args: Any, timeout: float = 120) -> dict[int, tuple]:
    """`target(rank, *args)` in two spawned processes that can form a gloo process group (RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT set, DeepSpeed on its CPU accelerator): rank -> what it returned. Both must exit
    0. `target` is a module-level function (spawned processes import it)."""
    import multiprocessing

    from orchestrator.machine import free_port

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=_as_rank, args=(target, rank, port, args, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    reported = dict(results.get(timeout=timeout) for _ in ranks)
    for rank, process in enumerate(ranks):
        process.join(timeout=60)
        assert process.exitcode == 0, f"rank {rank} ended with exit code {process.exitcode}"
    return reported


def _as_rank(target: Callable, rank: int, port: int, args: tuple, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    result = target(rank, *args)
    import torch.distributed as dist

    if dist.is_initialized():  # both ranks leave the group together: a rank gone mid-teardown aborts the other
        dist.barrier()
        dist.destroy_process_group()
    results.put((rank, result))


REPLY = "The sky is blue."
QUESTIONS = ["What colour is the sky?", "Tell me the sky's colour.", "Which colour has the sky today?",
             "Look up: what colour is it?", "Sky colour, please.", "Is the sky red or blue?",
             "Name the colour above us.", "What do you see above?"]


def write_chats(path: Path) -> Path:
    """64 samples, half as messages (some with a system turn), half as prompt/completion, one reply to learn."""
    rows = []
    for i in range(64):
        question = f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"
        if i % 2:
            rows.append({"prompt": question, "completion": REPLY})
        else:
            system = [{"role": "system", "content": "Answer briefly."}] if i % 4 == 0 else []
            rows.append({"messages": [*system, {"role": "user", "content": question},
                                      {"role": "assistant", "content": REPLY}]})
    return write_jsonl(path, rows)


def sft_args(model: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    """The e2e tier's fine-tuning job: the session's reference model on write_chats' samples, 30 steps."""
    return ["train", "task=sft", f"model.pretrained_path={model}", "data=local", f"data.path={data}",
            "data.chat_template=chatml", "train.seq_len=64", "train.micro_batch_size=4", "train.max_steps=30",
            "optim.lr=3e-3", "optim.warmup_steps=2", "train.eval_every=10", "train.log_every=1",
            "train.ckpt_every=10", "train.eval_batches=2", "logger.mode=disabled", f"run_dir={run_dir}", *extra]


def causal_lm_and_preferences(folder: Path) -> tuple[Path, Path]:
    """A one-layer GPT-2 folder saved with `save_pretrained` (its BPE tokenizer beside it) and a one-pair
    preference file: the least a `task=dpo` (or distillation teacher) config composes with."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.data.tokenizer import train_bpe

    model = folder / "model"
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        str(model))
    train_bpe(["a b c"] * 10, 300).save_pretrained(str(model))
    return model, write_jsonl(folder / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
