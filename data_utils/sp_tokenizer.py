"""The text tokenizer: a SentencePiece model (the released one is `cog-pretrain.model`, BPE, 50,000 pieces).

The original loaded the model by a path relative to the working directory, so every script had to run from
the repository root; here the default is resolved from this file's location.
"""

import os
from pathlib import Path

import sentencepiece as spm

from common.errors import InputError, MissingInputError
from common.paths import DEFAULT_TXT_TOKENIZER_PATH


class TokenizerModelNotFoundError(MissingInputError):
    """The SentencePiece model file does not exist."""


class TokenizerModelError(InputError):
    """The file exists but is not a SentencePiece model."""


class SentencePieceTokenizer:
    """Text ↔ raw SentencePiece ids (no BOS/EOS added), the original's `Encoder_SP`.

    `path` defaults to the released `pretrained/chinese_sentencepiece/cog-pretrain.model` of this repository;
    any other SentencePiece model (another language or vocabulary size) works the same way.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else DEFAULT_TXT_TOKENIZER_PATH
        if not self.path.is_file():
            if path is None:
                raise TokenizerModelNotFoundError(
                    f"The text tokenizer {self.path} is missing; run env/setup.sh to fetch it."
                )
            raise TokenizerModelNotFoundError(f"Text tokenizer model {self.path} does not exist.")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError) as error:
            raise TokenizerModelError(f"{self.path} is not a SentencePiece model file.") from error

    @property
    def num_tokens(self) -> int:
        """Vocabulary size of the SentencePiece model."""
        return self.sp.GetPieceSize()

    @property
    def end_id(self) -> int | None:
        """Raw id of the end-of-text piece (``</s>``), or None if the model has none."""
        end = self.sp.eos_id()
        return end if end >= 0 else None

    def encode(self, text: str) -> list[int]:
        """Text → raw SentencePiece ids."""
        return self.sp.EncodeAsIds(text)

    def unknown_words(self, text: str) -> list[str]:
        """The parts of ``text`` this model has no piece for (encoded to ``<unk>``), in order, each once.

        SentencePiece joins a run of unknown characters into one ``<unk>``, so with a word-level vocabulary
        (the bundled demo tokenizer) these are whole words (``pink``, ``粉色``); with ``cog-pretrain``
        they are rare characters or emoji. Costs one encode, and a second only when there is an ``<unk>``.
        """
        unk = self.sp.unk_id()
        if unk not in self.sp.EncodeAsIds(text):
            return []
        pieces = self.sp.encode(text, return_type="proto").pieces
        return list(dict.fromkeys(piece.surface.strip() for piece in pieces if piece.id == unk))

    def decode(self, ids: list[int]) -> str:
        """Raw SentencePiece ids → text."""
        return self.sp.DecodeIds([int(i) for i in ids])
