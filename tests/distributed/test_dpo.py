"""DPO's reference in two real DeepSpeed processes, measured: under LoRA no second copy of the model is held (the
policy with its adapters off), at ZeRO-3 each rank holds half of the frozen copy, and at ZeRO-2 the frozen copy
shows in the bytes each rank holds (so the LoRA measurement could see one). Every policy starts equal to its
reference, so the first loss is log 2, and the loss falls. (`task=dpo` through the command: tests/e2e/test_dpo.py.)"""

from __future__ import annotations

import math

import pytest

from tests.helpers import on_two_ranks

CASES = {"lora-zero2": ["peft=lora", "zero=2"], "full-zero3": ["zero=3"], "full-zero2": ["zero=2"]}
VOCAB = 300


def _pairs(rank: int):
    """Two pairs of [chosen, rejected] rows of 16 tokens, the second half of each row its response."""
    import torch

    from orchestrator.data.sft import ATTENDED, CHANNELS, IGNORE, INPUT_IDS, LABELS, POSITIONS

    torch.manual_seed(rank)
    batch = torch.zeros(2, 2, len(CHANNELS), 16, dtype=torch.long)
    batch[:, :, INPUT_IDS] = torch.randint(0, VOCAB, (2, 2, 16))
    batch[:, :, LABELS] = batch[:, :, INPUT_IDS]
    batch[:, :, LABELS, :8] = IGNORE
    batch[:, :, POSITIONS] = torch.arange(16)
    batch[:, :, ATTENDED] = 1
    return batch


def _dpo_on_rank(rank: int, folder: str, data: str) -> dict:
    import deepspeed

    from orchestrator import tasks
    from orchestrator.config.compose import compose
    from orchestrator.models.adapters import Adapters
    from orchestrator.plan.deepspeed import deepspeed_config
    from orchestrator.plan.plan import make_plan, resolved_config
    from orchestrator.train import engine as ds
    from orchestrator.train.memory_probe import model_state_bytes

    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    reported = {}
    for name, overrides in CASES.items():
        cfg = compose(["task=dpo", f"model.pretrained_path={folder}", "data=local", f"data.path={data}",
                       "cluster.num_workers=2", "train.precision=fp32", "train.micro_batch_size=2", "optim.lr=1e-2",
                       "optim.warmup_steps=0", *overrides])
        plan = make_plan(cfg)
        cfg = resolved_config(cfg, plan)
        ds_config = deepspeed_config(cfg, plan)
        task = tasks.for_config(cfg)
        sharded = ds.sharded_loading(ds_config, pretrained=True)  # as the worker does for a pretrained model
        model = task.build_model(cfg, {"vocab_size": VOCAB, "eos_token_id": 0})
        Adapters(cfg).before_engine(model)
        engine = ds.initialize(model, ds_config, lambda step: 1.0, 0.0)
        del sharded
        batch, losses = _pairs(rank), []
        for _ in range(4):
            loss, _ = task.loss(engine, batch, None)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        reported[name] = (losses, model_state_bytes(engine), task.final_report(engine, None, 2, rank, 2))
    return reported


def test_the_reference_is_no_copy_under_lora_and_half_a_copy_per_rank_at_zero3(tmp_path):
    import json

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from orchestrator.data.tokenizer import train_bpe

    folder = tmp_path / "model"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4)).save_pretrained(
        str(folder))
    train_bpe(["the quick brown fox jumps over the lazy dog"] * 40, VOCAB).save_pretrained(str(folder))
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}))
    reported = on_two_ranks(_dpo_on_rank, str(folder), str(data), timeout=240)
    for rank, cases in reported.items():
        for name, (losses, _, _) in cases.items():
            assert losses[0] == pytest.approx(math.log(2), abs=1e-5), (rank, name)
            assert losses[-1] < losses[0], (rank, name, losses)
        _, lora, report = cases["lora-zero2"]
        assert report["reference_param_bytes_per_rank"] == 0
        assert lora["grads_and_buffers"] < 0.5 * lora["params"], lora  # nothing the size of the model beside it
        _, full, report = cases["full-zero2"]
        assert full["grads_and_buffers"] >= report["reference_param_bytes"] == full["params"]  # the copy shows
        _, _, report = cases["full-zero3"]
        assert report["reference_param_bytes_per_rank"] <= 0.55 * report["reference_param_bytes"], report
