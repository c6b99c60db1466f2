"""Supervised fine-tuning end to end: the session's reference model (a model the tool trained, with its own
tokenizer and no chat template) fine-tuned on chat samples on two workers at ZeRO-2 and ZeRO-3, loaded back
with transformers, and asked with `orchestrator chat`; bad samples and folders refused in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    REPLY,
    assert_same_losses,
    command,
    metrics,
    orchestrator,
    sft_args,
    sigkill_a_worker_and_finish,
    summary,
    write_chats,
)

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    return write_chats(tmp_path_factory.mktemp("chats") / "chat.jsonl")


def sft(model: Path, data: Path, run_dir: Path, *extra: str):
    return orchestrator(*sft_args(model, data, run_dir, *extra))


def assert_learned_to_answer_and_stop(run_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orchestrator.data.chat import CHATML

    done = summary(run_dir)
    assert 0 < done["loss_tokens"] < done["tokens"] and 0 < done["packing_efficiency"] <= 1
    val = [row["val_loss"] for row in metrics(run_dir) if "val_loss" in row]
    assert val[-1] < val[0] / 4
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"))
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    assert tokenizer.chat_template == CHATML and model.get_input_embeddings().num_embeddings == len(tokenizer)
    answered = orchestrator("chat", str(run_dir), "--prompt", "What colour is the sky above the sea?")
    assert answered.returncode == 0, answered.stderr[-3000:]
    assert answered.stdout.strip() == REPLY  # the reply, then the end-of-turn token it learned: it stops


def test_a_model_the_tool_trained_learns_to_answer_and_stop_at_zero2(finetuned):
    assert_learned_to_answer_and_stop(finetuned)


@pytest.fixture(scope="module")
def finetuned_zero3(reference, chats, tmp_path_factory) -> tuple[Path, str]:
    """The same fine-tuning at ZeRO-3: (run directory, its output)."""
    run_dir = tmp_path_factory.mktemp("sft-zero3") / "run"
    result = sft(reference.run_dir / "model", chats, run_dir, "zero=3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout


def test_at_zero3_it_loads_partitioned_and_learns_the_same(finetuned, finetuned_zero3):
    """Each rank reads only its partition of the checkpoint, and the weights are the same: the first step's loss
    equals the ZeRO-2 run's."""
    run_dir, output = finetuned_zero3
    assert "model: loaded partitioned at ZeRO-3, rank 0 read" in output
    first_loss = [next(row["loss"] for row in metrics(run) if "loss" in row) for run in (run_dir, finetuned)]
    assert first_loss[0] == pytest.approx(first_loss[1], abs=1e-5)
    assert_learned_to_answer_and_stop(run_dir)


def test_a_sigkilled_worker_resumes_the_fine_tuning_exactly(finetuned, reference, chats, spawn, tmp_path):
    """Killed after step 12 (checkpoint of step 10): the restart continues at the next unseen packed row, every
    step is logged once, and every loss equals the uninterrupted run's."""
    run_dir = tmp_path / "killed"
    process = spawn(command(*sft_args(reference.run_dir / "model", chats, run_dir, "zero=2", "train.max_failures=1")),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sigkill_a_worker_and_finish(run_dir, process, 12)
    assert_same_losses(run_dir, finetuned, 30)


def test_compress_scores_a_fine_tuned_run_on_its_replies(finetuned):
    """Wanda on the fine-tuned run: calibrated on its packed rows (with their position ids), scored on the reply
    tokens of its validation samples, as the run itself was."""
    result = orchestrator("compress", f"run_dir={finetuned}", "compress=wanda50", "compress.compile=false",
                          "compress.latency_runs=1", "compress.eval_batches=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((finetuned / "compressed" / "wanda50" / "compress_report.json").read_text())
    final = summary(finetuned)["final_val_loss"]  # every token's loss would be far above it: prompts are not learned
    assert final / 2 <= report["val_loss_before"] <= final * 2
    assert abs(report["sparsity"] - 0.5) <= 0.01


@pytest.mark.parametrize(("row", "message"), [
    ({"text": "no chat here"}, "neither `messages` nor `prompt` and `completion`; its fields are text"),
    ({"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "hi"}]},
     "unknown role 'robot'; roles are system, user, assistant"),
    (None, "not valid JSON (Expecting property name enclosed in double quotes)"),
], ids=["no-known-fields", "unknown-role", "broken-line"])
def test_a_bad_sample_is_refused_in_one_line_naming_its_file_and_line(reference, tmp_path, row, message):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "hi", "completion": "hello"})
    data.write_text(good + "\n" + (json.dumps(row) if row is not None else '{"prompt": "hi", ') + "\n")
    result = sft(reference.run_dir / "model", data, tmp_path / "r")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"{data} line 2" in line and message in line, line
    assert not (tmp_path / "r").exists()


def test_a_model_without_a_chat_template_needs_one_named(reference, chats, tmp_path):
    result = orchestrator("train", "task=sft", f"model.pretrained_path={reference.run_dir / 'model'}", "data=local",
                          f"data.path={chats}", f"run_dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert "error: data.chat_template: the tokenizer has no chat template; name one (chatml)" in result.stderr
    assert not (tmp_path / "r").exists()


def test_an_encoder_only_model_is_refused_before_anything_starts(chats, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(str(tmp_path / "bert"))
    result = sft(tmp_path / "bert", chats, tmp_path / "r")
    assert result.returncode == 2
    assert f"error: model.pretrained_path={tmp_path / 'bert'}: is a BertForMaskedLM, not a causal LM" in result.stderr
    assert not (tmp_path / "r").exists()


def _lora(reference, chats, run_dir: Path, zero: str):
    """LoRA on the reference model, as the fixture's full fine-tuning but 10 steps, checkpointed at 5 and 10."""
    args = [a for a in sft_args(reference.run_dir / "model", chats, run_dir) if not a.startswith("train.max_steps")]
    result = orchestrator(*args, "train.max_steps=10", "train.ckpt_every=5", "peft=lora", "peft.r=4", f"zero={zero}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "adapters: the 2 tokens added to the vocabulary train their embedding rows too" in result.stdout
    return run_dir


def _assert_merged_equals_base_plus_adapter(reference, run_dir: Path) -> None:
    """RUN/model (plain transformers) and the base + RUN/adapter (peft) give the same logits on a fixed batch."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(run_dir / "model")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(reference.run_dir / "model"))
    base.resize_token_embeddings(merged.get_input_embeddings().num_embeddings)  # the template's tokens
    adapted = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    batch = torch.arange(2 * 24).reshape(2, 24) % merged.config.vocab_size
    with torch.no_grad():
        assert torch.allclose(merged(batch).logits, adapted(batch).logits, atol=1e-4)
    assert summary(run_dir)["base_model"]["path"] == str(reference.run_dir / "model")


def test_lora_at_zero3_trains_a_sliver_exports_adapter_and_merged_model_and_checkpoints_only_what_trains(
        finetuned_zero3, reference, chats, tmp_path):
    """Beside the full fine-tuning at the same stage: optimizer state at most 5% of its, the checkpoint at most
    10%; RUN/adapter loads with peft, RUN/model without it, and they give the same logits."""
    run_dir = _lora(reference, chats, tmp_path / "lora", "3")
    done, full = summary(run_dir), summary(finetuned_zero3[0])
    assert 0 < done["trainable_share"] < 0.25
    lora_optimizer = max(rank["optimizer"] for rank in done["measured_model_state_bytes_per_rank"])
    full_optimizer = max(rank["optimizer"] for rank in full["measured_model_state_bytes_per_rank"])
    assert lora_optimizer <= 0.05 * full_optimizer

    def size(run: Path) -> int:
        return sum(f.stat().st_size for f in (run / "checkpoints" / "step_00000010").rglob("*") if f.is_file())

    assert size(run_dir) <= 0.10 * size(finetuned_zero3[0])
    _assert_merged_equals_base_plus_adapter(reference, run_dir)
