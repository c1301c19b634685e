"""A word-level tokenizer over the world's VOCABULARY, for a rewriter that speaks the world's language.

Rules: ids 0 and 1 are `<|endoftext|>` (bos, eos and pad, as GPT-2) and `<unk>`; then the words of
grammar.VOCABULARY in its (sorted) order. Text is split on whitespace (a newline just splits) and
punctuation is cut off as its own token; each piece is looked up whole (WordLevel), so a word the
world does not know becomes `<unk>`. Decoding joins tokens with single spaces and removes the space
before "," and ":" (the WordPiece decoder's cleanup, plus one rule for ":"), which reproduces every
prompt and rewrite the grammar generates exactly.
"""

from __future__ import annotations

from typing import Any

from semdpo_core.world.grammar import VOCABULARY

EOS = "<|endoftext|>"
UNK = "<unk>"
MODEL_MAX_LENGTH = 128


def build_tokenizer() -> Any:
    """The world tokenizer as a transformers PreTrainedTokenizerFast (save_pretrained / from_pretrained work)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, UNK: 1}
    for word in VOCABULARY:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.Sequence([decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" :", ":")])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=UNK,
    )
    tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer
