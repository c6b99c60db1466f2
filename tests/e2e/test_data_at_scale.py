"""Data beyond the default corpus, end to end: a weighted mixture of two datasets (the share of training
blocks each source gives over 60 steps), and a streamed JSONL file; each resumes exactly after a worker
is SIGKILLed mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY, assert_same_losses, sigkill_a_worker_and_finish

pytestmark = pytest.mark.slow

STEPS = 60


def _sources(folder: Path) -> str:
    """Two JSONL files of different text (the stdlib's sources, split in two), weighted 0.75 and 0.25."""
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]
    for name, part in (("a", files[::2]), ("b", files[1::2])):
        with open(folder / f"{name}.jsonl", "w") as out:
            for source in part:
                out.write(json.dumps({"text": source.read_text()}) + "\n")
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    return f"data.sources=[{{path: '{a}', weight: 0.75}}, {{path: '{b}', weight: 0.25}}]"


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> list[str]:
    sources = _sources(tmp_path_factory.mktemp("sources"))
    return [sys.executable, "-m", "orchestrator", "train", *TINY, "data=local", "data.path=null", sources,
            "train.precision=fp32", f"train.max_steps={STEPS}", "train.ckpt_every=15", "train.eval_every=0",
            "train.log_every=1", "logger.mode=disabled"]


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run([*job, f"run_dir={run_dir}"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return run_dir, result.stdout


def test_blocks_come_from_each_source_with_its_weight_and_the_plan_says_so(reference):
    run_dir, stdout = reference
    position = json.loads((run_dir / "summary.json").read_text())["data_position"]
    first, second = position["sources"]
    assert first + second == position["samples"] == STEPS * 8  # micro 4 x 2 workers per step
    assert abs(first / position["samples"] - 0.75) <= 0.03
    shares = [line for line in stdout.splitlines() if "tokens of this run" in line]
    assert len(shares) == 2 and "a.jsonl: weight 0.75" in shares[0] and "b.jsonl: weight 0.25" in shares[1]


def _killed_once_matches(command: list[str], run_dir: Path, reference: Path, at_step: int, steps: int) -> None:
    """The command, with a worker SIGKILLed at `at_step`, restarts once and logs the reference's losses."""
    process = subprocess.Popen([*command, f"run_dir={run_dir}", "train.max_failures=1"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        sigkill_a_worker_and_finish(run_dir, process, at_step, rank=0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert_same_losses(run_dir, reference, steps)
    position = json.loads((run_dir / "summary.json").read_text())["data_position"]
    assert position == json.loads((reference / "summary.json").read_text())["data_position"]


def test_a_sigkilled_worker_resumes_the_mixture_exactly(job, reference, tmp_path):
    _killed_once_matches(job, tmp_path / "killed", reference[0], at_step=35, steps=STEPS)


def test_a_streamed_jsonl_file_trains_and_resumes_exactly(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    _sources(tmp_path)
    corpus.write_bytes((tmp_path / "a.jsonl").read_bytes() + (tmp_path / "b.jsonl").read_bytes())
    steps = 20
    command = [sys.executable, "-m", "orchestrator", "train", *TINY, "data=local", f"data.path={corpus}",
               "data.streaming=true", "train.precision=fp32", f"train.max_steps={steps}", "train.ckpt_every=10",
               "train.eval_every=10", "train.log_every=1", "logger.mode=disabled"]
    reference = subprocess.run([*command, f"run_dir={tmp_path / 'reference'}"], capture_output=True, text=True,
                               timeout=900)
    assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-3000:]
    assert "data: streamed /" in reference.stdout
    position = json.loads((tmp_path / "reference" / "summary.json").read_text())["data_position"]
    assert position["samples"] == steps * 8 and position["document"] > 0  # read on into the file
    _killed_once_matches(command, tmp_path / "killed", tmp_path / "reference", at_step=13, steps=steps)
