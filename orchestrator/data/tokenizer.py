"""Tokenizers: loaded from a local folder, or trained here on the corpus: a byte-level BPE for causal LMs, a
WordPiece for an encoder built from its config (task=classify).

A byte-level BPE covers any input (no unknown tokens), trains in seconds on a few MB with the
`tokenizers` library, and is saved in Hugging Face format so `AutoTokenizer.from_pretrained`
loads it next to the trained model.
"""

from __future__ import annotations

from collections.abc import Iterable

EOS = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a GPT-2-style byte-level BPE and wrap it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)


def train_wordpiece(texts: Iterable[str], vocab_size: int):
    """Train a BERT-style WordPiece (lower-cased, [CLS] text [SEP] and [CLS] a [SEP] b [SEP] with token types)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                                                      show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token is None:
        tok.eos_token = EOS if EOS in tok.get_vocab() else tok.convert_ids_to_tokens(0)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
