"""The demo's text tokenizer: a SentencePiece BPE model trained on the captions of both languages.

Every colour and animal name and every fixed word of the two caption templates is declared a
user-defined symbol, so each is exactly one piece (the zh caption is 6 pieces, the en one 7) and a colour
means the same piece whether it names the animal or the background; BPE learns nothing beyond them on
this corpus, which gives a 46-piece vocabulary (a small output projection for the GPT). Anything else a
user types (another colour, another animal) becomes `<unk>`. Training is deterministic: the unique captions
in sorted order, one thread.
"""

import io
import os
from collections.abc import Iterable

import sentencepiece as spm

from common.atomic_files import atomic_write_bytes
from common.errors import InputError
from demo.captions import template_literals
from demo.vocabulary import ANIMALS, PALETTE

WORD_BOUNDARY = "▁"  # SentencePiece's marker of a preceding space
MAX_VOCAB_SIZE = 1000  # an upper bound only: the corpus yields far fewer pieces


def demo_symbols() -> list[str]:
    """The pieces the model must keep whole: names and template words, Chinese as they are written,
    English with the word-boundary marker SentencePiece puts before each space-separated word."""
    chinese = [c.zh for c in PALETTE] + [a.zh for a in ANIMALS] + template_literals("zh")
    english_words = [c.en for c in PALETTE] + [a.en for a in ANIMALS]
    english_words += [word for literal in template_literals("en") for word in literal.split()]
    english = [WORD_BOUNDARY + word for word in dict.fromkeys(english_words)]
    return chinese + english


def train_text_tokenizer(captions: Iterable[str], output: str | os.PathLike) -> spm.SentencePieceProcessor:
    """Train on `captions` (duplicates ignored) and write the model to `output` atomically."""
    corpus = sorted(set(captions))
    if not corpus:
        raise InputError("no captions to train the text tokenizer on.")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=MAX_VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        user_defined_symbols=demo_symbols(),
        num_threads=1,
        minloglevel=2,
    )
    atomic_write_bytes(output, buffer.getvalue())
    return spm.SentencePieceProcessor(model_proto=buffer.getvalue())
