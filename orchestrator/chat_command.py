"""`orchestrator chat RUN_DIR [--prompt TEXT]`: talk to a trained model, rendered with the chat template it was
fine-tuned with (saved beside it), on a GPU when there is one, else the CPU. Greedy unless --temperature > 0;
interactive (the conversation kept) when no prompt is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.errors import ConfigError


def run(run_dir: str, prompt: str | None, max_new_tokens: int, temperature: float) -> int:
    folder = trained_model_folder(Path(run_dir).expanduser())
    if max_new_tokens < 1:
        raise ConfigError([f"--max-new-tokens={max_new_tokens}: must be >= 1"])
    if temperature < 0:
        raise ConfigError([f"--temperature={temperature}: must be >= 0 (0 = greedy)"])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orchestrator.data.chat import end_of_turn

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not tokenizer.chat_template:
        raise ConfigError([f"{run_dir}: its model has no chat template; fine-tune it with task=sft "
                           "(data.chat_template=chatml for a base model)"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(folder)).to(device).eval()
    stop = end_of_turn(tokenizer)
    messages: list[dict] = []
    for text in ([prompt] if prompt is not None else _typed()):
        messages.append({"role": "user", "content": text})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id, do_sample=temperature > 0,
                                 **({"temperature": temperature} if temperature > 0 else {}))
        reply = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        print(reply, flush=True)
        messages.append({"role": "assistant", "content": reply})
    return 0


def trained_model_folder(path: Path) -> Path:
    """A run directory's model/, or a model folder itself."""
    for folder in (path / "model", path):
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError([f"{path}: no trained model here (a run directory holds model/ once its run finished)"])


def _typed():
    """The user's lines until an empty one or end of input."""
    while True:
        try:
            text = input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            return
        if not text.strip():
            return
        yield text
