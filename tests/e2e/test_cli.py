"""The `orchestrator` command as users run it, in a subprocess."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import BAD_INPUTS, REFERENCE_STEPS, TINY, orchestrator  # BAD_INPUTS: the config table

CLI_ONLY = [
    (["train.seq_len"], "Error parsing override", ""),
    (["=3"], "Error parsing override", ""),
    (["zero="], "zero=: no such option", ""),
    (["train.resume=/nonexistent"], "train.resume=/nonexistent", "checkpoint folder"),
]
TABLE = [(overrides, key) for overrides, key, _ in BAD_INPUTS] + [(o, k) for o, k, _ in CLI_ONLY]


@pytest.mark.parametrize(("overrides", "message"), TABLE, ids=[" ".join(o) for o, _ in TABLE])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, overrides, message):
    assert len(TABLE) >= 20
    run_dir = tmp_path / "run"
    result = orchestrator("train", *overrides, f"run_dir={run_dir}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no runs/, outputs/ or anything else


# What the machine or the filesystem cannot do: refused before Ray starts or data is prepared.
PREFLIGHT = [
    ("cluster.cpus_per_worker=1000", "cluster.num_workers=2 x cluster.cpus_per_worker=1000 = 2000 CPUs, but this "
                                     "machine has"),
    ("cluster.num_workers=64", "cluster.num_workers=64 x cluster.cpus_per_worker=1 = 64 CPUs, but this machine has"),
    ("run_dir=/proc/forbidden/run", "run_dir=/proc/forbidden/run: cannot create folders in /proc"),
    ("run_dir=/etc/passwd/x", "run_dir=/etc/passwd/x: /etc/passwd is a file, not a folder"),
    ("data.cache_dir=/proc/nope", "data.cache_dir=/proc/nope: cannot create folders in /proc"),
]


@pytest.mark.parametrize(("override", "message"), PREFLIGHT, ids=[o for o, _ in PREFLIGHT])
def test_what_this_machine_cannot_do_is_refused_in_one_line_before_anything_starts(tmp_path, override, message):
    started = time.monotonic()
    result = orchestrator("train", override, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no run directory


def test_help_and_config_errors_answer_fast():
    started = time.perf_counter()
    assert orchestrator("--help").returncode == 0
    assert orchestrator("train", "zero=7").returncode == 2
    assert time.perf_counter() - started < 10  # no torch/Ray/DeepSpeed import on these paths


def test_cfg_job_prints_the_composed_config():
    result = orchestrator("train", "zero=3", "optim.lr=3e-4", "--cfg", "job")
    assert result.returncode == 0
    assert "stage: 3" in result.stdout and "lr: 0.0003" in result.stdout


def test_plan_json_is_machine_readable():
    result = orchestrator("plan", "model=gpt2-124m", "cluster.num_workers=4", "train.grad_accum=2", "plan.format=json")
    assert result.returncode == 0
    plan = json.loads(result.stdout)
    assert plan["plan"]["world_size"] == 4
    assert plan["plan"]["params"] == 124_439_808
    assert plan["deepspeed"]["train_batch_size"] == 8 * 2 * 4


LIBRARY_NOISE = ("built successfully", "Token authentication is enabled", "Writing model shards", "Loading weights",
                 "Generating train split", "Downloading data", "Ray deduplicates logs")
"""Lines libraries print on every run that ask nothing of the user (launch/worker_output.py, library_logs.py)."""


def test_output_to_a_file_or_pipe_has_what_a_user_reads_without_colour_codes_or_library_noise(reference):
    """The reference run's output, captured through pipes as a scheduler's log file would be."""
    output = reference.output
    assert "\x1b[" not in output
    assert [noise for noise in LIBRARY_NOISE if noise in output] == []
    for needed in ("plan: world_size=2", "memory per rank:", "first step", f"step {REFERENCE_STEPS}/{REFERENCE_STEPS}",
                   "run directory: "):
        assert needed in output, needed


def test_train_zero3_end_to_end(reference_zero3):
    """The documented check: a ZeRO-3 run from the command line (the session's, tests/e2e/conftest.py); loss falls;
    the run dir is printed."""
    run_dir, output = reference_zero3.run_dir, reference_zero3.output
    assert f"run directory: {run_dir}" in output
    assert f"step {REFERENCE_STEPS}/{REFERENCE_STEPS}" in output  # rank 0's progress lines reach the terminal
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("final_train_loss", "final_val_loss", "final_val_ppl", "steps", "tokens", "wall_s", "world_size",
                "peak_memory_bytes_per_rank", "mfu", "hfu", "startup", "step_time_s", "checkpoint_write_s",
                "checkpoint_bytes"):
        assert key in summary
    # the start-up breakdown is printed, counted from the command's process start
    assert "first step " in output and "s after the command started: prepare " in output
    assert summary["startup"]["cluster_s"] > 0 and summary["startup"]["time_to_first_step_s"] > 3
    # its CPU ranks started as copies of the launcher its own cluster came with: their imports were done
    assert summary["startup"]["imports_s"] < 1.0, summary["startup"]
    assert (run_dir / "model" / "config.json").is_file()
    assert len(list((run_dir / "checkpoints" / f"step_{REFERENCE_STEPS:08d}").glob("*optim_states.pt"))) == 2

    # the plan of the same config, calibrated from this run, reproduces the step it measured and its checkpoint
    # (a prediction for another run of the reference job: test_fault_tolerance.py's stop-signal test)
    planned = orchestrator("plan", "--config", str(run_dir / "config.yaml"), "--calibrate", str(run_dir),
                           "plan.format=json")
    assert planned.returncode == 0, planned.stderr
    scale = json.loads(planned.stdout)["plan"]["scale"]
    assert scale["step_time_s"] == pytest.approx(summary["step_time_s"], rel=0.2)
    assert scale["checkpoint_bytes_total"] == pytest.approx(summary["checkpoint_bytes"], rel=0.05)
    assert scale["calibration"]["mfu"] == summary["mfu"]
    text = orchestrator("plan", "--config", str(run_dir / "config.yaml"), "--calibrate", str(run_dir))
    assert f"calibrated from {run_dir}" in text.stdout and "at scale: cpu, 1 machine x 2 = 2 devices" in text.stdout


def test_rerun_into_a_run_dir_with_another_config_is_refused(tmp_path):
    run_dir = tmp_path / "done"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("model:\n  hidden_size: 64\n")
    result = orchestrator("train", f"run_dir={run_dir}")
    assert result.returncode == 2
    assert "holds a run with a different config" in result.stderr and "model.hidden_size=64" in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    result = orchestrator("train", f"run_dir={run_dir}", "train.resume=never")
    assert result.returncode == 2 and "train.resume=never" in result.stderr


def test_model_smaller_than_tokenizer_is_refused_before_launch(tmp_path):
    result = orchestrator("train", *TINY, "model.vocab_size=100", f"run_dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert "model.vocab_size=100: smaller than the tokenizer's 512 tokens" in result.stderr
    assert not Path(tmp_path / "r").exists()


def test_a_worker_failure_exits_1_with_the_root_cause_in_one_line(tmp_path):
    """A model folder whose weights file was cut short after its header (a copy that did not finish): the plan
    reads the header, every worker fails to load the weights."""
    import struct

    from transformers import GPT2Config, GPT2LMHeadModel

    broken = tmp_path / "truncated"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512)).save_pretrained(broken)
    weights = broken / "model.safetensors"
    with open(weights, "rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    os.truncate(weights, 8 + header + 16)
    result = orchestrator("train", *TINY, f"model.pretrained_path={broken}", "train.max_steps=2",
                          "train.max_failures=0", f"run_dir={tmp_path / 'r'}")  # restarts: test_fault_tolerance
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training failed: rank ") and "SafetensorError" in last, last
    # The run directory says so too: `compare` shows it failed (not running), with the same line.
    event = json.loads((tmp_path / "r" / "events.jsonl").read_text().splitlines()[-1])
    assert (event["event"], event["error"]) == ("failed", last.removeprefix("error: training failed: "))
    shown = orchestrator("compare", str(tmp_path / "r"), "--format", "json")
    assert [(r["status"], r["error"]) for r in json.loads(shown.stdout)["runs"]] == [("failed", event["error"])]


def test_a_plan_that_cannot_fit_is_refused_with_the_numbers(tmp_path):
    run_dir = tmp_path / "r"
    result = orchestrator("train", "model=llama-7b", "cluster=local", "zero=0", "cluster.cpu_memory_gb=8",
                          f"run_dir={run_dir}")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "does not fit" in line and "GB of CPU memory per node" in line and "> 8.0 GB" in line
    assert not run_dir.exists()


def test_plan_zero_auto_explains_its_choice():
    result = orchestrator("plan", "model=llama-7b", "cluster=slurm", "cluster.nodes=4", "cluster.gpus_per_node=8",
                          "cluster.gpu_memory_gb=80", "zero=auto")
    assert result.returncode == 0
    assert "zero=auto: rejected zero=0" in result.stdout
    assert "zero=auto: chose zero=" in result.stdout
    assert "fit: fits" in result.stdout
