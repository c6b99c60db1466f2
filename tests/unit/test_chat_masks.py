"""The loss mask of a chat sample covers exactly each assistant reply and its end-of-turn token, for the
template styles users bring (written here as those families write them), and for the built-in ChatML whose
generations are marked; a template's control tokens the tokenizer lacks are added as single tokens."""

from __future__ import annotations

import pytest

from orchestrator.data import chat
from orchestrator.data.tokenizer import train_bpe

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What does ZeRO-3 shard?"},
    {"role": "assistant", "content": "Parameters, gradients and optimizer states."},
    {"role": "user", "content": "And ZeRO-1?"},
    {"role": "assistant", "content": "Only the optimizer states."},
]


@pytest.fixture(scope="module")
def corpus_tokenizer():
    texts = [m["content"] for m in CONVERSATION] * 30 + ["system user assistant model answer briefly"] * 30
    return lambda: train_bpe(texts, 400)


def _runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    """The contiguous stretches of counted tokens."""
    runs, current = [], []
    for token, counted in zip(ids, mask, strict=True):
        if counted:
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    return runs + ([current] if current else [])


@pytest.mark.parametrize(("template", "end"), [(LLAMA3, "<|eot_id|>"), (QWEN, "<|im_end|>"), (GEMMA, "<end_of_turn>"),
                                               ("chatml", "<|im_end|>")], ids=["llama3", "qwen", "gemma", "chatml"])
def test_the_mask_covers_each_reply_and_its_end_of_turn_token_only(corpus_tokenizer, template, end):
    tokenizer = corpus_tokenizer()
    text = chat.BUILT_IN.get(template, template)
    added = chat.add_template_tokens(tokenizer, text)
    assert end in added
    ids, mask = chat.render(tokenizer, CONVERSATION)
    replies = [m["content"] + end for m in CONVERSATION if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in _runs(ids, mask)] == replies
    assert ids.count(tokenizer.convert_tokens_to_ids(end)) == len(CONVERSATION)  # one token, never split
    assert chat.end_of_turn(tokenizer) == tokenizer.convert_tokens_to_ids(end)


def test_a_tokenizer_without_a_template_and_none_named_is_refused(corpus_tokenizer):
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="data.chat_template: the tokenizer has no chat template"):
        chat.template_text(None, corpus_tokenizer())
