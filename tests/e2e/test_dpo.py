"""Preference tuning end to end: the session's fine-tuned chat model (tests/e2e/conftest.py `finetuned`) aligned
with `task=dpo` on two workers, on pairs whose chosen answer names the right colour and whose rejected one a
wrong colour; a SIGKILLed worker resumes it exactly; bad rows and settings are refused in one line, before
anything is written. (The reference's memory at ZeRO-3 and under LoRA: tests/distributed/test_dpo.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    assert_same_losses,
    command,
    metrics,
    orchestrator,
    sigkill_a_worker_and_finish,
    summary,
    write_jsonl,
)

pytestmark = pytest.mark.slow

COLOURS = [("sky", "blue", "green"), ("grass", "green", "purple"), ("snow", "white", "black"),
           ("sun", "yellow", "blue"), ("coal", "black", "white"), ("blood", "red", "blue"),
           ("sea", "blue", "orange"), ("night", "dark", "bright")]
STEPS = 20


@pytest.fixture(scope="module")
def preferences(tmp_path_factory) -> Path:
    """96 pairs; a seeded sixth of them held out for validation."""
    rows = []
    for i in range(96):
        thing, right, wrong = COLOURS[i % len(COLOURS)]
        rows.append({"prompt": f"What colour is the {thing}? ({i})", "chosen": f"The {thing} is {right}.",
                     "rejected": f"The {thing} is {wrong}."})
    return write_jsonl(tmp_path_factory.mktemp("prefs") / "prefs.jsonl", rows)


def dpo_args(model: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "task=dpo", f"model.pretrained_path={model}", "data=local", f"data.path={data}",
            "data.val_fraction=0.17", "train.seq_len=64", "train.micro_batch_size=4", f"train.max_steps={STEPS}",
            "optim.lr=1e-3", "optim.warmup_steps=2", "train.eval_every=10", "train.log_every=1",
            "train.ckpt_every=10", "train.eval_batches=2", "dpo.beta=0.1", "logger.mode=disabled",
            f"run_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def aligned(finetuned, preferences, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("dpo") / "run"
    result = orchestrator(*dpo_args(finetuned / "model", preferences, run_dir, "zero=2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_a_fine_tuned_model_learns_to_prefer_the_chosen_answers(aligned, finetuned):
    import math

    from transformers import AutoModelForCausalLM

    rows = metrics(aligned)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as its reference
    evaluated = [row for row in rows if "val_preference_accuracy" in row]
    assert [row["step"] for row in evaluated] == [10, 20]
    assert evaluated[-1]["val_preference_accuracy"] > 0.9
    assert 0 < evaluated[0]["val_reward_margin"] < evaluated[-1]["val_reward_margin"]
    assert evaluated[-1]["val_logp_chosen"] > evaluated[-1]["val_logp_rejected"]
    done = summary(aligned)
    assert done["final_val_preference_accuracy"] == evaluated[-1]["val_preference_accuracy"]
    assert done["reference"] == "frozen copy" and done["reference_param_bytes_per_rank"] > 0
    tuned, start = (AutoModelForCausalLM.from_pretrained(str(run / "model")) for run in (aligned, finetuned))
    assert tuned.config.vocab_size == start.config.vocab_size
    assert not all(a.equal(b) for a, b in zip(tuned.parameters(), start.parameters(), strict=True))


def test_a_sigkilled_worker_resumes_the_alignment_exactly(aligned, finetuned, preferences, spawn, tmp_path):
    run_dir = tmp_path / "killed"
    process = spawn(command(*dpo_args(finetuned / "model", preferences, run_dir, "zero=2", "train.max_failures=1")),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sigkill_a_worker_and_finish(run_dir, process, 12)
    assert_same_losses(run_dir, aligned, STEPS)


def test_bad_rows_and_settings_are_refused_in_one_line_before_anything_is_written(finetuned, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    encoder = tmp_path / "bert"
    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(str(encoder))
    broken = write_jsonl(tmp_path / "broken.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                     {"prompt": "p", "chosen": "a"}])
    cache = tmp_path / "cache"
    cases = [
        ([f"model.pretrained_path={finetuned / 'model'}", f"data.path={broken}"],
         f"error: {broken} line 2: a preference row needs `prompt`, `chosen` and `rejected`; its fields are "
         "prompt, chosen"),
        ([f"model.pretrained_path={finetuned / 'model'}", f"data.path={broken}", "dpo.beta=0"],
         "error: dpo.beta=0.0: must be > 0"),
        ([f"model.pretrained_path={encoder}", f"data.path={broken}"],
         f"error: model.pretrained_path={encoder}: is a BertForMaskedLM, not a causal LM"),
    ]
    for overrides, line in cases:
        run_dir = tmp_path / "run"
        result = orchestrator("train", "task=dpo", "data=local", *overrides, f"data.cache_dir={cache}",
                              f"run_dir={run_dir}")
        assert result.returncode == 2, result.stderr[-3000:]
        [error] = result.stderr.strip().splitlines()
        assert error.startswith(line), error
        assert not run_dir.exists()
        assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == [], list(cache.iterdir())
