"""Supervised fine-tuning's data and loss: a packed sample is scored exactly as alone, and a step's loss and
gradients do not depend on how the global batch is split into micro-batches, accumulation steps and ranks."""

from __future__ import annotations

import pytest
import torch

from orchestrator.data import chat, sft
from orchestrator.data.tokenizer import train_bpe
from orchestrator.tasks.sft import SupervisedFineTuning

SAMPLES = [
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour of the sky at noon."},
     {"role": "assistant", "content": "Blue, mostly, on a clear day."}],
    [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two, three, four, five."},
     {"role": "user", "content": "Backwards?"}, {"role": "assistant", "content": "Five, four, three, two, one."}],
    [{"role": "user", "content": "Yes or no?"}, {"role": "assistant", "content": "Yes."}],
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [m["content"] for sample in SAMPLES for m in sample] * 20
    tok = train_bpe(texts, 320)
    chat.add_template_tokens(tok, chat.CHATML)
    return tok


def _model(arch: str, vocab: int, attention: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    config = (GPT2Config(vocab_size=vocab, n_positions=256, n_embd=32, n_layer=2, n_head=4) if arch == "gpt2" else
              LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


def _encoded(tokenizer, seq_len: int = 256):
    counts = {"truncated": 0, "dropped": 0}
    return [sft._encode(tokenizer, messages, seq_len, sft.Truncation.truncate, counts) for messages in SAMPLES]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_each_packed_sample_scores_as_it_does_alone(tokenizer, arch, attention):
    model = _model(arch, len(tokenizer), attention)
    samples = _encoded(tokenizer)
    [row] = torch.from_numpy(sft._rows_of(samples, 256, True, tokenizer.pad_token_id).astype("int64"))
    with torch.no_grad():
        packed = model(input_ids=row[None, 0], position_ids=row[None, 2], use_cache=False).logits[0]
    starts = (row[2] == 0).nonzero().flatten().tolist()  # each sample (and the padding) starts at position 0
    found = 0
    for start, end in zip(starts, [*starts[1:], 256], strict=False):
        ids = row[0, start:end]
        if not row[3, start]:
            continue  # the padding
        with torch.no_grad():
            alone = model(input_ids=ids[None], use_cache=False).logits[0]
        torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=1e-5)
        found += 1
    assert found == len(SAMPLES)


def _step(task, model, rows: torch.Tensor, micro: int, accum: int, world: int, monkeypatch):
    """(reported loss, gradients) of one optimizer step over `rows`, reduced as DeepSpeed reduces them: each
    rank's micro-batch losses divided by `accum`, the ranks' gradients averaged."""
    import torch.distributed as dist

    total = float((rows[:, sft.CHANNELS.index("labels")] != sft.IGNORE).sum())
    monkeypatch.setattr(dist, "all_reduce", lambda tensor: tensor.fill_(total))  # every rank's count summed
    model.zero_grad()
    reported = 0.0
    for rank in range(world):
        mine = rows[rank * micro * accum:(rank + 1) * micro * accum]  # ranks take consecutive shares
        batches = [mine[i * micro:(i + 1) * micro] for i in range(accum)]
        normalizer = task.loss_normalizer(batches, accum, world)
        for batch in batches:
            loss, weight = task.loss(model, batch, normalizer)
            (loss / accum / world).backward()
            reported += loss.item() * weight / accum / world
    return reported, [p.grad.clone() for p in model.parameters()]


def test_the_loss_and_gradients_are_the_same_however_the_global_batch_is_split(tokenizer, monkeypatch):
    """8 unpacked rows of different lengths (different counts of reply tokens): micro 8 x accum 1 on one rank,
    micro 1 x accum 8, and micro 2 x accum 2 on two ranks all give the mean over the batch's reply tokens."""
    task = SupervisedFineTuning()
    model = _model("gpt2", len(tokenizer), "sdpa")  # eval mode: no dropout, gradients all the same
    rows = torch.from_numpy(sft._rows_of(_encoded(tokenizer) * 2, 128, False, tokenizer.pad_token_id).astype("int64"))
    reference_loss, reference = _step(task, model, rows, 8, 1, 1, monkeypatch)
    labels = rows[:, 1]
    with torch.no_grad():
        logits = model(input_ids=rows[:, 0], use_cache=False).logits[:, :-1]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                 ignore_index=sft.IGNORE)
    assert reference_loss == pytest.approx(expected.item(), rel=1e-5)
    for micro, accum, world in [(1, 8, 1), (2, 2, 2), (4, 1, 2)]:
        loss, grads = _step(task, model, rows, micro, accum, world, monkeypatch)
        assert loss == pytest.approx(reference_loss, rel=1e-5)
        for grad, expected_grad in zip(grads, reference, strict=True):
            torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    ("bad.json", b'[{"prompt": "a", "completion": "b"},\n {"prompt": ]', "line 2: not valid JSON"),
    ("bad.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1: no assistant message"),
    ("bad.jsonl", b'{"messages": [{"role": "user", "content": 3}]}\n', "line 1: every message needs a `role`"),
], ids=["parquet", "json-array", "no-reply", "content-not-text"])
def test_unreadable_samples_are_refused_naming_the_file_and_where(tmp_path, name, content, message):
    from orchestrator.errors import ConfigError

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        sft.read_samples(str(path))
    [problem] = refused.value.problems
    assert problem.startswith(str(path)) and message in problem, problem
