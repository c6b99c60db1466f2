"""A real 2-worker DeepSpeed job on the shared embedded Ray cluster, checked through its run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orchestrator.train.driver import train
from tests.wandb_reader import history, run_ids

STEPS = 30


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tmp_path_factory, data_cache):
    """One 30-step ZeRO-2 run shared by the assertions below (the fixture isolation is per test)."""
    import os

    from orchestrator.config.compose import compose
    from tests.helpers import TINY

    os.environ["ORCHESTRATOR_CACHE"] = data_cache
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    cfg = compose([*TINY, "zero=2", f"train.max_steps={STEPS}", "train.eval_every=10", "train.ckpt_every=10",
                   "optim.warmup_steps=5", "optim.lr=3e-3", f"run_dir={run_dir}"])
    assert train(cfg) == run_dir
    return run_dir


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_step_is_logged_once_and_val_loss_falls(finished_run):
    rows = _metrics(finished_run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val) == 3
    assert val[0] > val[1] > val[2]
    assert val[-1] < math.log(512) - 0.5  # well below a uniform guess over the 512-token vocabulary
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in rows)


def test_summary_agrees_with_metrics(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    last = _metrics(finished_run)[-1]
    assert summary["final_train_loss"] == pytest.approx(last["loss"])
    assert summary["final_val_loss"] == pytest.approx(last["val_loss"])
    assert summary["final_val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
    assert summary["steps"] == STEPS
    assert summary["tokens"] == STEPS * 4 * 2 * 64
    assert summary["world_size"] == 2
    assert len(summary["peak_memory_bytes_per_rank"]) == 2
    assert all(b > 10_000_000 for b in summary["peak_memory_bytes_per_rank"])
    assert summary["wall_s"] > 0


def test_summary_records_predicted_and_measured_model_state_memory(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    predicted = summary["predicted_model_state_bytes_per_rank"]
    measured = summary["measured_model_state_bytes_per_rank"]
    assert len(measured) == 2
    for rank in measured:
        assert rank["params"] == 4 * summary["params"]  # ZeRO-2 keeps whole fp32 parameters on every rank
        assert rank["total"] == pytest.approx(predicted, rel=0.10)


def test_checkpoints_hold_every_ranks_shard(finished_run):
    ckpt = finished_run / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"step_{STEPS:08d}"
    for step in (10, 20, 30):
        shards = sorted(p.name for p in (ckpt / f"step_{step:08d}").glob("*optim_states.pt"))
        assert len(shards) == 2, shards


def test_wandb_offline_run_holds_the_same_losses(finished_run):
    wandb_dir = finished_run / "wandb"
    assert run_ids(wandb_dir) == {json.loads((finished_run / "run.json").read_text())["run_id"]}
    logged = {row["_step"]: row["loss"] for row in history(wandb_dir) if "loss" in row}
    assert logged == {r["step"]: r["loss"] for r in _metrics(finished_run)}


def test_throughput_mfu_and_startup_are_in_metrics_summary_and_wandb(finished_run):
    from tests.wandb_reader import inspect

    summary = json.loads((finished_run / "summary.json").read_text())
    rows = _metrics(finished_run)
    assert all(0 < r["mfu"] <= r["hfu"] < 1 for r in rows)  # no checkpointing: hfu == mfu
    assert 0 < summary["mfu"] < 1 and summary["hfu"] == pytest.approx(summary["mfu"])
    # MFU is the plan's FLOPs per token x tokens/s over the peak of both workers
    assert summary["mfu"] == pytest.approx(summary["flops_per_token"] * summary["tokens_per_s"]
                                           / (2 * summary["peak_flops_per_device"]))
    startup = summary["startup"]
    phases = ["prepare_s", "cluster_s", "worker_group_s", "imports_s", "data_s", "model_s", "engine_s", "first_step_s"]
    # the test session's shared cluster was already up: this run had no cluster phase of its own
    assert [p for p in startup if p != "time_to_first_step_s"] == [p for p in phases if p != "cluster_s"]
    assert sum(startup[p] for p in startup if p != "time_to_first_step_s") == pytest.approx(
        startup["time_to_first_step_s"], abs=0.01)
    [recorded] = inspect(finished_run / "wandb", "--summary")
    text = json.dumps(recorded)
    for key in ("mfu", "hfu", "time_to_first_step_s", "worker_group_s"):
        assert f'"{key}"' in text, key


def test_config_yaml_is_the_resolved_config(finished_run):
    text = (finished_run / "config.yaml").read_text()
    assert f"run_dir: {finished_run}" in text
    assert "${" not in text  # interpolations resolved
    assert "max_steps: 30" in text


def test_saved_model_loads_with_transformers_and_generates(finished_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(finished_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(finished_run / "model")
    prompt = tokenizer("def main(", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0])
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert text.startswith("def main(")
    # The saved weights are the trained ones: the model's loss on training text beats a random init's.
    sample = tokenizer("import os\nimport sys\n\ndef main():\n    return 0\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        trained_loss = model(sample, labels=sample).loss.item()
    assert trained_loss < math.log(len(tokenizer)) - 0.5
