"""One id space for image codes, text pieces and command tokens, and its query language.

Layout, derived from the two tokenizers' sizes (the released ones give the numbers in brackets):

    [0, I)              image codes, I = the VQ-VAE's codebook size                       [0, 8192)
    [I, I + T)          text: SentencePiece id + I, T = the SentencePiece vocabulary      [8192, 58192)
    [I + T, I + T + 27) the 27 command tokens of `COMMAND_TOKENS`, in that order          [58192, 58219)

`len(tokenizer)` is I + T + 27 (58219); the model pads its vocabulary further, with ids never emitted here.
"""

import argparse
import os
from collections.abc import Sequence

import numpy as np
import torch

from common.devices import resolve_device
from common.errors import InputError
from data_utils.layouts import MASK, grid_side, size_token
from data_utils.sp_tokenizer import SentencePieceTokenizer
from data_utils.vqvae_tokenizer import PretokenizedImageTokenizer, VQVAETokenizer

COMMAND_TOKENS = (
    "[PAD]",
    "[BOI1]",  # begin of image
    "[BOI2]",
    "[BOI3]",
    "[EOI1]",  # end of image
    "[EOI2]",
    "[EOI3]",
    "[ROI1]",  # reference (text) of image
    "[ROI2]",
    "[ROI3]",
    "[SEP]",
    "[MASK]",
    "[CLS]",
    "[ENC]",
    "[TINY]",  # 8×8 codes
    "[SMALL]",  # 16×16
    "[BASE]",  # 32×32
    "[BIG]",  # 64×64
    "[POS0]",
    "[POS1]",
    "[POS2]",
    "[POS3]",
    "[POS4]",
    "[POS5]",
    "[POS6]",
    "[POS7]",
    "[POS8]",
)

Code = list[int] | np.ndarray | torch.Tensor


class QueryError(InputError):
    """A generation query that cannot be parsed."""


class QueryTooLongError(QueryError):
    """A query longer than the model takes; ``length`` is its length so far (a lower bound)."""

    def __init__(self, length: int, max_length: int):
        super().__init__(
            f"the query is at least {length} tokens long, but the model takes at most {max_length}"
        )
        self.length, self.max_length = length, max_length


def as_int_list(ids: Sequence[int] | np.ndarray | torch.Tensor) -> list[int]:
    """Any 1-D container of ids (list, numpy array, tensor) → list of Python ints."""
    if isinstance(ids, np.ndarray | torch.Tensor):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


class UnifiedTokenizer:
    """Text, image codes and command tokens in one id space.

    img_tokenizer_path: a VQ-VAE checkpoint; None with `img_tokenizer_num_tokens` set gives the pre-tokenised
        mode (ids and text work, encoding or decoding images raises NoImageTokenizerError).
    device: where the VQ-VAE runs and where encoded images end up.
    img_tokenizer_num_tokens: number of image codes; checked against the VQ-VAE when both are given.
    txt_tokenizer_path: any SentencePiece model; None → the repository's `cog-pretrain.model`.
    """

    def __init__(
        self,
        img_tokenizer_path: str | os.PathLike | None,
        device: str | int | torch.device | None = "cpu",
        img_tokenizer_num_tokens: int | None = None,
        txt_tokenizer_path: str | os.PathLike | None = None,
    ):
        self.device = resolve_device(device)
        if img_tokenizer_path is None:
            if img_tokenizer_num_tokens is None:
                raise InputError("UnifiedTokenizer needs img_tokenizer_path or img_tokenizer_num_tokens.")
            self.img_tokenizer = PretokenizedImageTokenizer(img_tokenizer_num_tokens)
        else:
            self.img_tokenizer = VQVAETokenizer(img_tokenizer_path, self.device)
            if img_tokenizer_num_tokens not in (None, self.img_tokenizer.num_tokens):
                raise InputError(
                    f"VQ-VAE {img_tokenizer_path} has {self.img_tokenizer.num_tokens} codes, "
                    f"but img_tokenizer_num_tokens is {img_tokenizer_num_tokens}."
                )
        self.txt_tokenizer = SentencePieceTokenizer(txt_tokenizer_path)
        self.num_image_tokens = self.img_tokenizer.num_tokens
        self.num_text_tokens = self.txt_tokenizer.num_tokens
        self.command_start = self.num_image_tokens + self.num_text_tokens
        self.command_tokens = {name: self.command_start + i for i, name in enumerate(COMMAND_TOKENS)}

    @property
    def num_tokens(self) -> int:
        """Total number of ids the tokenizer can emit (image + text + command)."""
        return self.command_start + len(COMMAND_TOKENS)

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def caption_end_id(self) -> int | None:
        """Unified id of the text tokenizer's end piece (``</s>``), or None if it has none.

        A caption model trained on rows whose caption ends with it (`preprocess_entry.py --caption-end`)
        learns where a caption stops; image2text cuts its generated text there.
        """
        end = self.txt_tokenizer.end_id
        return None if end is None else end + self.num_image_tokens

    def __getitem__(self, command_token: str) -> int:
        """Id of a command token, e.g. tokenizer['[ROI1]'] → 58199."""
        try:
            return self.command_tokens[command_token]
        except KeyError:
            raise KeyError(
                f"{command_token!r} is not a command token; they are {', '.join(COMMAND_TOKENS)}."
            ) from None

    def __call__(self, inputs: str | torch.Tensor) -> list[int] | torch.Tensor:
        """Text → unified ids (never command tokens); image [b, 3, H, W] or [3, H, W] → codes [b, h*w]."""
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() == 3:
                inputs = inputs.unsqueeze(0)
            return self.img_tokenizer.EncodeAsIds(inputs)
        return self.EncodeAsIds(inputs)

    def EncodeAsIds(self, text: str) -> list[int]:
        """Text → unified ids (SentencePiece ids shifted past the image codes)."""
        return [i + self.num_image_tokens for i in self.txt_tokenizer.encode(text)]

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` the text tokenizer does not know (see ``SentencePieceTokenizer``).

        Command names and ``[MASK]``/``[Image]`` parts of a query are not words and are never listed.
        """
        return [
            word
            for word in self.txt_tokenizer.unknown_words(text)
            if word not in self.command_tokens and not word.startswith(("[MASK]", "[Image"))
        ]

    def read_img(self, path: str | os.PathLike, img_size: int = 256) -> torch.Tensor:
        """Read an image file → normalised [1, 3, img_size, img_size] on the tokenizer's device."""
        return self.img_tokenizer.read_img(path, img_size)

    def DecodeIds(
        self, ids: Sequence[int] | np.ndarray | torch.Tensor
    ) -> tuple[list[str], list[torch.Tensor]]:
        """Unified ids → (text pieces and command names in order, decoded images [1, 3, H, W] in order).

        Consecutive text ids decode as one string; an image is a run of codes closed by `[EOI*]` or the end.
        Unlike the original, which printed a message and returned what it had so far, a malformed sequence
        (an id outside the vocabulary, a −1 placeholder, a non-square image run) raises a ValueError.
        """
        segments: list[str] = []
        images: list[torch.Tensor] = []
        text_buffer: list[int] = []
        image_buffer: list[int] = []
        for position, token in enumerate(as_int_list(ids)):
            if token == MASK:
                raise ValueError(
                    f"Position {position} holds -1, a position still to generate ([MASK] in parse_query); "
                    "fill the sequence first, e.g. with generation.filling_sequence."
                )
            if not 0 <= token < self.num_tokens:
                raise ValueError(
                    f"Id {token} at position {position} is outside the vocabulary [0, {self.num_tokens})."
                )
            if token >= self.command_start:
                name = COMMAND_TOKENS[token - self.command_start]
                if name.startswith("[EOI") and image_buffer:
                    images.append(self.img_tokenizer.DecodeIds(image_buffer))
                    image_buffer = []
                if text_buffer:
                    segments.append(self.txt_tokenizer.decode(text_buffer))
                    text_buffer = []
                segments.append(name)
            elif token < self.num_image_tokens:
                image_buffer.append(token)
            else:
                text_buffer.append(token - self.num_image_tokens)
        if image_buffer:
            images.append(self.img_tokenizer.DecodeIds(image_buffer))
        if text_buffer:
            segments.append(self.txt_tokenizer.decode(text_buffer))
        return segments, images

    def wrap_code(self, code: Code, idx: int = 1) -> Code:
        """`[size] [BOI{idx}] code [EOI{idx}]`, the size token from the square grid (8 → [TINY] … 64 → [BIG]).

        Returns the same container type as `code` (list, numpy array or tensor on the code's device).
        """
        num_codes = code.numel() if isinstance(code, torch.Tensor) else np.size(code)
        size = size_token(grid_side(num_codes))
        if idx not in (1, 2, 3):
            raise ValueError(f"Image slot idx must be 1, 2 or 3, got {idx}.")
        prefix = [self[size], self[f"[BOI{idx}]"]]
        suffix = [self[f"[EOI{idx}]"]]
        if isinstance(code, torch.Tensor):
            return torch.cat([code.new_tensor(prefix), code.flatten(), code.new_tensor(suffix)])
        if isinstance(code, np.ndarray):
            return np.concatenate(
                [np.array(prefix, dtype=np.int64), code.flatten(), np.array(suffix, dtype=np.int64)]
            )
        return prefix + list(code) + suffix

    def parse_query(self, query: str, img_size: int = 256, max_length: int | None = None) -> list[int]:
        """A generation query → unified ids with −1 at the positions the model must fill.

        With ``max_length``, a ``[MASK]*N`` that would make the query longer is refused before anything
        is allocated (``[MASK]*9999999999`` would otherwise need some 80 GB).

        The query is split on single spaces; each part is
          * a command name such as `[ROI1]` → its id, except `[MASK]` → −1;
          * `[MASK]*N` → N × −1;
          * `[Image]path` or `[ImageN]path` → the image read at `img_size` and encoded; codes from position N
            on (default: none) become −1;
          * anything else is text: consecutive text parts are re-joined with single spaces and encoded
            together.
        Quirks kept from the original: image paths cannot contain spaces, and text that spells a command name
        (e.g. "[SEP]") becomes that command. Unlike the original, text before an `[Image]` part stays before
        it, and a path may contain `]` (the first `]` ends the count).
        """
        ids: list[int] = []
        text_parts: list[str] = []

        def flush_text() -> None:
            if text_parts:
                ids.extend(self.EncodeAsIds(" ".join(text_parts)))
                text_parts.clear()

        for part in query.split(" "):
            if part in self.command_tokens:
                flush_text()
                ids.append(MASK if part == "[MASK]" else self.command_tokens[part])
            elif part.startswith("[MASK]*"):
                count = part[len("[MASK]*") :]
                if not count.isdigit() or int(count) == 0:
                    raise QueryError(f"{part!r} in the query: N in [MASK]*N must be a positive integer.")
                flush_text()
                if max_length is not None and len(ids) + int(count) > max_length:
                    raise QueryTooLongError(len(ids) + int(count), max_length)
                ids.extend([MASK] * int(count))
            elif part.startswith("[Image"):
                count, bracket, path = part[len("[Image") :].partition("]")
                if not bracket or not path or not (count == "" or count.isdigit()):
                    raise QueryError(f"{part!r} in the query: expected [Image]path or [ImageN]path.")
                flush_text()
                codes = as_int_list(self(self.read_img(path, img_size))[0])
                keep = len(codes) if count == "" else int(count)
                ids.extend(codes[:keep] + [MASK] * (len(codes) - keep))
            else:
                text_parts.append(part)
        flush_text()
        return ids


_TOKENIZER: UnifiedTokenizer | None = None


def get_tokenizer(
    args: argparse.Namespace | None = None, tokenizer: UnifiedTokenizer | None = None
) -> UnifiedTokenizer:
    """The process-wide tokenizer of the original: built on the first call from `args`, then returned.

    Uses `args.img_tokenizer_path`, `args.img_tokenizer_num_tokens`, `args.text_tokenizer_path` (if present)
    and `args.device` ('cpu', 'cuda:0', an int GPU index, or None: the current GPU if any, else the CPU).
    Passing `tokenizer` installs that one instead. Library code takes the tokenizer explicitly; this exists
    for the scripts and for the templates' default.
    """
    global _TOKENIZER
    if tokenizer is not None:
        _TOKENIZER = tokenizer
    elif _TOKENIZER is None:
        if args is None:
            raise RuntimeError(
                "get_tokenizer() was called before any tokenizer was built; call get_tokenizer(args)."
            )
        _TOKENIZER = UnifiedTokenizer(
            args.img_tokenizer_path,
            device=resolve_device(getattr(args, "device", None)),
            img_tokenizer_num_tokens=args.img_tokenizer_num_tokens,
            txt_tokenizer_path=getattr(args, "text_tokenizer_path", None),
        )
    return _TOKENIZER


def tokenizer_or_default(
    tokenizer: UnifiedTokenizer | None, args: argparse.Namespace | None = None
) -> UnifiedTokenizer:
    """``tokenizer``, or the process-wide one (built from ``args`` if need be) when it is None.

    The one fallback for the original's call forms that pass no tokenizer (``filling_sequence(model, seq,
    args)``, the templates, ``inverse_prompt_score(model, seq, args)``, ``get_dataset_by_type(type, path,
    args)``); this repository's own code always passes one.
    """
    return tokenizer if tokenizer is not None else get_tokenizer(args)
