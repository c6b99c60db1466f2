"""DPO's loss and its pairs: the loss of a fixed batch against a hand computation from the log-probabilities, only
the response's tokens scored, and bad rows refused in one line naming their file and line."""

from __future__ import annotations

import json
import math

import pytest

from orchestrator.config.schema import DpoLoss
from orchestrator.errors import ConfigError
from orchestrator.tasks.dpo import preference_loss, response_logps


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("loss, smoothing", [(DpoLoss.sigmoid, 0.0), (DpoLoss.sigmoid, 0.2), (DpoLoss.ipo, 0.0)])
def test_the_loss_of_a_fixed_batch_equals_a_hand_computation(loss, smoothing):
    import torch

    beta = 0.3
    policy_chosen = torch.tensor([-12.5, -30.25, -7.0])
    policy_rejected = torch.tensor([-14.0, -29.0, -9.5])
    reference_chosen = torch.tensor([-13.0, -31.0, -7.25])
    reference_rejected = torch.tensor([-13.5, -30.0, -9.0])
    losses, figures = preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta,
                                      loss, smoothing)
    for i in range(3):
        pc, pr = policy_chosen[i].item(), policy_rejected[i].item()
        rc, rr = reference_chosen[i].item(), reference_rejected[i].item()
        h = (pc - rc) - (pr - rr)
        if loss is DpoLoss.ipo:
            expected = (h - 1 / (2 * beta)) ** 2
        else:
            expected = -(1 - smoothing) * _log_sigmoid(beta * h) - smoothing * _log_sigmoid(-beta * h)
        assert losses[i].item() == pytest.approx(expected, abs=1e-5)
        margin = beta * (pc - rc) - beta * (pr - rr)
        assert figures[:, i].tolist() == pytest.approx([margin, float(margin > 0), pc, pr], abs=1e-5)


def test_response_logps_sum_the_log_probabilities_of_the_response_tokens_only():
    import torch

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    summed = response_logps(logits, labels, mean=False)
    log_probs = torch.log_softmax(logits, dim=-1)
    expected = [log_probs[0, 1, 3] + log_probs[0, 2, 4],
                log_probs[1, 0, 1] + log_probs[1, 1, 2] + log_probs[1, 2, 6] + log_probs[1, 3, 0]]
    assert summed.tolist() == pytest.approx([e.item() for e in expected], abs=1e-5)
    averaged = response_logps(logits, labels, mean=True)
    assert averaged.tolist() == pytest.approx([expected[0].item() / 2, expected[1].item() / 4], abs=1e-5)


def test_a_row_missing_rejected_is_refused_naming_its_file_and_line(tmp_path):
    from orchestrator.data.dpo import read_pairs

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(ConfigError) as refused:
        read_pairs(str(path), chat_format=True)
    assert str(refused.value) == (f"{path} line 2: a preference row needs `prompt`, `chosen` and `rejected`; its "
                                  "fields are prompt, chosen")


def test_message_lists_without_a_chat_template_are_refused(tmp_path):
    from orchestrator.data.dpo import read_pairs

    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "p"}], "chosen": "a", "rejected": "b"}))
    with pytest.raises(ConfigError, match="line 1: message lists need a chat template"):
        read_pairs(str(path), chat_format=False)


def test_only_the_response_is_scored_not_the_assistant_turns_of_the_prompt():
    from orchestrator.data import chat
    from orchestrator.data.tokenizer import train_bpe

    tokenizer = train_bpe(["what colour is the sky? it is blue. no, it is red."] * 20, 300)
    chat.add_template_tokens(tokenizer, chat.CHATML)
    prompt = [{"role": "user", "content": "what colour?"}, {"role": "assistant", "content": "it is red."},
              {"role": "user", "content": "no, the sky?"}]
    reply = [{"role": "assistant", "content": "it is blue."}]
    ids, mask = chat.render(tokenizer, [*prompt, *reply], replies_from=len(prompt))
    scored = tokenizer.decode([token for token, counted in zip(ids, mask, strict=True) if counted])
    assert scored == "it is blue.<|im_end|>"
    _, every_reply = chat.render(tokenizer, [*prompt, *reply])
    assert sum(every_reply) > sum(mask)  # without replies_from the prompt's assistant turn counts too


def test_the_plan_counts_both_rows_of_a_pair_and_the_reference(compose_tiny, tmp_path):
    from orchestrator.plan.plan import make_plan
    from tests.helpers import causal_lm_and_preferences

    folder, data = causal_lm_and_preferences(tmp_path)
    common = [f"model.pretrained_path={folder}", "data=local", f"data.path={data}", "zero=3"]
    sft, dpo = make_plan(compose_tiny("task=sft", *common)), make_plan(compose_tiny("task=dpo", *common))
    assert dpo.tokens_per_step == 2 * sft.tokens_per_step
    assert dpo.memory["reference"] == pytest.approx(dpo.memory["params"], rel=0.05)  # 1/N of it, as the params
    lora = make_plan(compose_tiny("task=dpo", "peft=lora", *common))
    assert lora.memory["reference"] == 0  # the model with its adapters off: no copy
