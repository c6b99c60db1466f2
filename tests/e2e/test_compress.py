"""`orchestrator compress` on a run the tool trained: the report, the gate, the reload, the refusals.

The session's reference run (tiny GPT-2, 2 workers, ZeRO-2, 30 steps; tests/e2e/conftest.py) is what
every test compresses, each into its own compressed/<pipeline>/ folder: no training of its own. Latency
is timed once per figure and compiled only where the test is about it, to keep the tests short on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import wandb_reader
from tests.helpers import orchestrator

FAST = ["compress.compile=false", "compress.latency_runs=1", "compress.eval_batches=4"]
PINNED = {"pipeline", "sparsity", "ppl_before", "ppl_after", "linear_weight_bytes_before", "linear_weight_bytes_after",
          "file_bytes_before", "file_bytes_after", "latency", "passes"}


@pytest.fixture
def trained_run(reference) -> Path:
    return reference.run_dir


def report(run_dir: Path, pipeline: str) -> dict:
    return json.loads((run_dir / "compressed" / pipeline / "compress_report.json").read_text())


def test_global_magnitude_pruning_at_50_percent_is_measured_saved_and_reloads_exactly(trained_run):
    import torch
    from transformers import AutoModelForCausalLM

    from orchestrator.compress.artifact import load

    result = orchestrator("compress", f"run_dir={trained_run}", "compress=prune50", *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = report(trained_run, "prune50")
    assert PINNED <= set(r)
    assert abs(r["sparsity"] - 0.5) <= 0.005
    assert len(r["sparsity_per_layer"]) == 8 and len(set(r["sparsity_per_layer"].values())) > 1  # global ranking
    assert r["ppl_before"] > 1 and r["ppl_after"] > 1 and r["passes"][0]["pass"] == "magnitude"
    assert r["reload_max_abs_diff"] <= 1e-5
    assert r["linear_weight_bytes_after"] == r["linear_weight_bytes_before"]  # dense storage: zeros cost the same
    assert "before" in result.stdout and "magnitude" in result.stdout  # the table
    # Pruned weights only: a plain transformers folder, GPT-2's Conv1D layout back in place.
    folder = trained_run / "compressed" / "prune50"
    plain = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, load(folder)(ids).logits)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["compress"]["prune50"]["sparsity"] == r["sparsity"]
    logged = wandb_reader.history(folder / "wandb")  # W&B's own reader
    assert [round(row["sparsity"], 6) for row in logged] == [round(r["sparsity"], 6)]


def test_int8_dynamic_quantizes_gpt2s_conv1d_layers_and_shrinks_the_file(trained_run):
    result = orchestrator("compress", f"run_dir={trained_run}", "compress=int8_dynamic", "compress.latency_runs=2",
                          "compress.eval_batches=4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = report(trained_run, "int8_dynamic")
    assert r["conv1d_swapped"] == 8
    assert r["linear_weight_bytes_after"] <= 0.27 * r["linear_weight_bytes_before"]  # all 8 layers, not lm_head
    assert r["file_bytes_after"] < r["file_bytes_before"]
    assert r["reload_max_abs_diff"] <= 1e-5
    assert abs(r["ppl_after"] / r["ppl_before"] - 1) < 0.05
    for when in ("before", "after"):
        for mode in ("eager", "compiled"):
            assert r["latency"][when][mode]["prefill_ms"] > 0 and r["latency"][when][mode]["decode_ms"] > 0


def test_a_failed_perplexity_gate_exits_1_and_keeps_the_report(trained_run):
    result = orchestrator("compress", f"run_dir={trained_run}", "compress=prune70", "compress.max_ppl_increase=0.001",
                          *FAST)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: gate failed: compress.max_ppl_increase=0.001: perplexity rose")
    r = report(trained_run, "prune70")
    assert r["gate"] == {"max_ppl_increase": 0.001, "passed": False} and r["ppl_increase"] > 0.001


@pytest.mark.parametrize(("args", "message"), [
    (["compress=int4_weight", "compress.passes.0.group_size=48"],
     "compress.passes[0].group_size=48: must be one of 32, 64, 128, 256"),
    (["compress=gradual_prune50"], "compress=gradual_prune50: compress.passes[0]=gradual_magnitude runs during "
                                   "training; run `orchestrator train compress=gradual_prune50`"),
    (["compress=int8_weight", "compress.passes.0.lm_head=true"], "compress.passes[0].lm_head=true: the output head is "
                                                                 "tied"),
    (["compress=none"], "compress=none: no passes"),
    (["compress=prune50", "train.max_steps=5"], "train.max_steps=5: `orchestrator compress` takes run_dir="),
])
def test_impossible_requests_are_refused_in_one_line_before_anything_runs(trained_run, args, message):
    before = sorted(trained_run.rglob("*"))
    result = orchestrator("compress", f"run_dir={trained_run}", *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert sorted(trained_run.rglob("*")) == before  # nothing written


def test_compress_needs_a_run_directory(tmp_path):
    result = orchestrator("compress", "compress=prune50")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: run_dir: required: the trained run to compress "
                                     "(orchestrator compress run_dir=runs/<name> compress=prune50)")
    result = orchestrator("compress", f"run_dir={tmp_path}", "compress=prune50")
    assert result.returncode == 2 and "not a run directory (no config.yaml)" in result.stderr


def test_a_run_without_its_final_model_is_compressed_from_its_merged_zero_shards(trained_run, tmp_path):
    import shutil

    from safetensors.torch import load_file

    copy = tmp_path / "unfinished"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("model", "compressed"))
    result = orchestrator("compress", f"run_dir={copy}", "compress=prune50", *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "merging the ZeRO shards of" in result.stdout
    merged = load_file(copy / "compressed" / "consolidated" / "model.safetensors")
    final = load_file(trained_run / "model" / "model.safetensors")
    assert merged.keys() == final.keys()
    assert max((merged[k] - final[k]).abs().max().item() for k in final) <= 1e-6
    assert abs(report(copy, "prune50")["sparsity"] - 0.5) <= 0.005


def _linear_weights(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    return {name: p.detach() for name, p in model.named_parameters() if name.endswith(".weight") and p.ndim == 2
            and (".attn.c_" in name or ".mlp.c_" in name)}


def test_wanda_at_50_percent_prunes_each_layer_by_weight_times_activation(trained_run):
    result = orchestrator("compress", f"run_dir={trained_run}", "compress=wanda50", *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = report(trained_run, "wanda50")
    assert r["passes"][0]["pass"] == "wanda" and abs(r["sparsity"] - 0.5) <= 0.005
    assert all(abs(share - 0.5) <= 0.01 for share in r["sparsity_per_layer"].values())  # per layer, not global
    assert r["reload_max_abs_diff"] <= 1e-5 and r["ppl_after"] > 1


def test_2_of_4_leaves_two_zeros_in_every_group_of_four_inputs(trained_run):
    result = orchestrator("compress", f"run_dir={trained_run}", "compress=prune_2of4", *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert abs(report(trained_run, "prune_2of4")["sparsity"] - 0.5) <= 0.005
    for name, weight in _linear_weights(trained_run / "compressed" / "prune_2of4").items():
        rows = weight.t() if ".c_" in name else weight  # GPT-2's Conv1D keeps (inputs, outputs): inputs per row
        groups = rows.reshape(rows.shape[0], -1, 4)
        assert ((groups == 0).sum(-1) >= 2).all(), name


def test_mlp_channel_pruning_shrinks_every_mlp_and_still_loads_as_a_plain_model(trained_run):
    from transformers import AutoConfig

    result = orchestrator("compress", f"run_dir={trained_run}", "compress=mlp_prune25", *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = report(trained_run, "mlp_prune25")
    before = AutoConfig.from_pretrained(str(trained_run / "model"))
    after = AutoConfig.from_pretrained(str(trained_run / "compressed" / "mlp_prune25"))
    width = before.n_inner or 4 * before.n_embd
    assert after.n_inner == int(width * 0.75) // 32 * 32 < width
    assert r["linear_weight_bytes_after"] < r["linear_weight_bytes_before"]
    assert all(w.shape[-1 if ".c_fc" in n else 0] == after.n_inner
               for n, w in _linear_weights(trained_run / "compressed" / "mlp_prune25").items() if ".mlp." in n)


@pytest.mark.parametrize(("pipeline", "at_most"), [("int8_weight", 0.27), ("int4_weight", 0.2)])
def test_weight_only_quantization_shrinks_the_linear_weights_and_reloads_exactly(trained_run, pipeline, at_most):
    result = orchestrator("compress", f"run_dir={trained_run}", f"compress={pipeline}", *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r = report(trained_run, pipeline)
    assert r["linear_weight_bytes_after"] <= at_most * r["linear_weight_bytes_before"]
    assert r["file_bytes_after"] < r["file_bytes_before"]
    assert r["reload_max_abs_diff"] <= 1e-5
    assert abs(r["ppl_after"] / r["ppl_before"] - 1) < 0.05


def test_wanda_then_distillation_wins_perplexity_back_at_exactly_the_same_sparsity(trained_run):
    """The distill pass trains the pruned model as the student of the run's own model, in a distributed job."""
    from transformers import AutoModelForCausalLM

    result = orchestrator("compress", f"run_dir={trained_run}", "compress=wanda50_distill",
                          "compress.passes.1.steps=10", *FAST)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pruned, distilled = report(trained_run, "wanda50_distill")["passes"]
    assert (pruned["pass"], distilled["pass"]) == ("wanda", "distill")
    assert distilled["ppl"] < pruned["ppl"]
    assert pruned["sparsity"] == distilled["sparsity"] == 0.5
    job = trained_run / "compressed" / "wanda50_distill.distill" / "run"  # an ordinary task=distill run
    done = json.loads((job / "summary.json").read_text())
    assert done["steps"] == 10 and done["teacher_val_loss"] > 0 and done["teacher_param_bytes"] > 0
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 11))
    assert all(row["distill_loss"] >= 0 and row["data_loss"] > 0 for row in rows)
    AutoModelForCausalLM.from_pretrained(str(job / "model"))
    AutoModelForCausalLM.from_pretrained(str(trained_run / "compressed" / "wanda50_distill"))
