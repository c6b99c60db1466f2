"""Chat samples -> token ids and the mask of the tokens the loss counts, rendered by the tokenizer's own chat
template (the one the model will be prompted with), never by searching for a response string.

The mask covers each assistant message's content and its end-of-turn token, nothing of the prompt, the roles
or the generation prompt. Where the template marks generations (`{% generation %}`), transformers' assistant
mask gives it; otherwise each assistant turn's characters are found by rendering the conversation up to the
turn with the generation prompt (where the reply starts) and up to the end of the turn (where it ends), and
the tokens of the whole rendering that overlap that span count (whitespace after the end-of-turn token does
not). Both read one tokenization of the whole conversation, so a token is never split differently in
context than in training.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.errors import ConfigError

ROLES = ("system", "user", "assistant")

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML (Qwen's format), with its generations marked."""

BUILT_IN = {"chatml": CHATML}

_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>|<(?:start|end)_of_turn>")
"""Control tokens a template writes literally (ChatML's, Llama 3's, Gemma's)."""


def template_text(chat_template: str | None, tokenizer, key: str = "data.chat_template") -> str:
    """data.chat_template (a built-in name or a Jinja file), else the tokenizer's own; refused if neither."""
    if chat_template is None:
        if not tokenizer.chat_template:
            raise ConfigError([f"{key}: the tokenizer has no chat template; name one ({', '.join(BUILT_IN)}) or "
                               "give a Jinja file's path"])
        return tokenizer.chat_template
    if chat_template in BUILT_IN:
        return BUILT_IN[chat_template]
    path = Path(chat_template).expanduser()
    if not path.is_file():
        raise ConfigError([f"{key}={chat_template}: neither a built-in template ({', '.join(BUILT_IN)}) nor a file"])
    return path.read_text()


def add_template_tokens(tokenizer, template: str) -> list[str]:
    """Add the control tokens the template writes that the tokenizer lacks (as special tokens: never split);
    returns them, so the caller can say so and the model's embeddings can grow to match."""
    vocab = tokenizer.get_vocab()
    missing = sorted({token for token in _SPECIAL.findall(template) if token not in vocab})
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = template
    return missing


def end_of_turn(tokenizer) -> int:
    """The token that ends an assistant turn: the last special token the mask of a probe reply covers."""
    ids, mask = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    special = set(tokenizer.all_special_ids)
    covered = [token for token, counted in zip(ids, mask, strict=True) if counted and token in special]
    return covered[-1] if covered else tokenizer.eos_token_id


def render(tokenizer, messages: list[dict], replies_from: int = 0) -> tuple[list[int], list[int]]:
    """(token ids, 1 where the loss counts) of one conversation, rendered by the tokenizer's chat template; the
    loss counts the assistant messages from index `replies_from` on (a preference pair's response, not the
    assistant turns of its prompt)."""
    marked = "{% generation %}" in tokenizer.chat_template or "{%- generation %}" in tokenizer.chat_template
    if marked and not any(message["role"] == "assistant" for message in messages[:replies_from]):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and i >= replies_from:
            start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
            end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
            spans.append((start, end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    mask = [int(any(first < end and last > start for start, end in spans)) for first, last in offsets]
    for start, end in spans:  # whitespace the template writes after the end-of-turn token is not the reply
        inside = [i for i, (first, last) in enumerate(offsets) if first < end and last > start]
        while inside and not tokenizer.decode([ids[inside[-1]]]).strip():
            mask[inside.pop()] = 0
    return ids, mask
