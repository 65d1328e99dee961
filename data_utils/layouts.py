"""The sequence layouts of CogView, written once for preprocessing, training and generation.

T = text ids, n = codes per image side, ``[size]`` = the size token of an n×n grid (``size_token``):

text2image        ``[ROI1] T [size] [BOI1] codes(n²) [EOI1]``          pretraining; generation stops after the
                                                                       codes (nothing follows them to predict)
image2text        ``[size] [BOI1] codes(n²) [EOI1] [ROI1] T``          the caption model and post-selection
unconditional     ``[ROI1] [size] [BOI1] codes(n²) [EOI1]``            text2image without its caption
                                                                       (``drop_caption``): caption dropout in
                                                                       training, classifier-free guidance
super-resolution  ``[ROI1] T [size] [BOI1] crop [EOI1] [ROI2] [POS0] [size] [BOI2] block``

In a super-resolution row ``crop`` is a window of the n×n low-resolution codes and ``block`` the matching
window of the 2n×2n codes of the same image at twice the size; both size tokens name the low-resolution
grid (``[BASE]`` for the released 32×32 model). The 3×3 windows (``super_resolution_windows``) step by n/4
low-res codes, so training gives 9 rows per image, in the order generation fills them; generation fills
only the first rows of each block that later windows do not redraw. There is no ``[EOI2]``: inference never
reaches one. Low-level super-resolution uses the same row with the whole half-size image as ``crop`` and
the whole full-size grid as ``block``. (The original repository's own SR preprocessing wrote a different,
obsolete layout; this is what its released SR model saw at inference.)

Ids may be given as any sequence of ints; ``MASK`` (−1) marks a position for generation to fill.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.errors import InputError

TEXT2IMAGE, IMAGE2TEXT, SUPER_RESOLUTION = "text2image", "image2text", "super-resolution"
LAYOUTS = (TEXT2IMAGE, IMAGE2TEXT, SUPER_RESOLUTION)
SIZE_TOKENS = {8: "[TINY]", 16: "[SMALL]", 32: "[BASE]", 64: "[BIG]"}
MASK = -1  # placeholder id: "generate this position"
SR_MIDFIX = ("[EOI1]", "[ROI2]", "[POS0]", None, "[BOI2]")  # None: the size token
SR_WINDOW_ORDER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))  # (row, column)


class CommandIds(Protocol):
    """What the layouts need from a tokenizer: the id of a command token by name."""

    def __getitem__(self, command_token: str) -> int: ...


def size_token(side: int) -> str:
    """The size command of a ``side``×``side`` code grid (``SIZE_TOKENS``: 32 → ``[BASE]``)."""
    try:
        return SIZE_TOKENS[side]
    except KeyError:
        raise InputError(
            f"No size token for a {side}×{side} code grid; sides with one are {sorted(SIZE_TOKENS)}."
        ) from None


def grid_side(num_codes: int) -> int:
    """Side of the square grid of ``num_codes`` codes; an InputError if that is not a square number."""
    side = math.isqrt(num_codes)
    if side * side != num_codes:
        raise InputError(f"An image segment of {num_codes} codes is not a square grid.")
    return side


def _ids(codes: Sequence[int] | np.ndarray) -> list[int]:
    return [int(i) for i in np.asarray(codes).reshape(-1)]


def text2image(
    tokenizer: CommandIds, text_ids: Sequence[int], codes: Sequence[int], *, end_image: bool = True
) -> list[int]:
    """``[ROI1] T [size] [BOI1] codes [EOI1]``; without ``end_image`` the final ``[EOI1]`` is left off."""
    codes = _ids(codes)
    row = [
        tokenizer["[ROI1]"],
        *_ids(text_ids),
        tokenizer[size_token(grid_side(len(codes)))],
        tokenizer["[BOI1]"],
        *codes,
    ]
    return [*row, tokenizer["[EOI1]"]] if end_image else row


def caption_span(tokenizer: CommandIds, row: Sequence[int]) -> tuple[int, int] | None:
    """``(start, stop)`` of the caption in a text2image ``row`` (``row[start:stop]``); None for other rows.

    Other rows: no leading ``[ROI1]``, no ``[BOI1]`` after the caption, or a super-resolution row (its
    ``[ROI2]``).
    """
    ids = _ids(row)
    boi1, roi2 = tokenizer["[BOI1]"], tokenizer["[ROI2]"]
    if not ids or ids[0] != tokenizer["[ROI1]"] or boi1 not in ids[2:] or roi2 in ids:
        return None
    return 1, ids.index(boi1, 2) - 1  # the caption ends at the size token before [BOI1]


def drop_caption(tokenizer: CommandIds, row: Sequence[int]) -> list[int]:
    """The unconditional form of a text2image ``row``: its caption removed, ``[ROI1] [size] [BOI1] ...``.

    Everything from the size token on (codes, ``[EOI1]``, padding or ``MASK`` placeholders) is kept as it
    is, so the same function serves training rows (caption dropout) and generation queries
    (classifier-free guidance). ``[ROI1]`` stays: the model still learns "an image follows", and the row
    keeps its first token. A row that is not text2image (see :func:`caption_span`) is an InputError.
    """
    ids = _ids(row)
    span = caption_span(tokenizer, ids)
    if span is None:
        raise InputError("Only a text2image row ([ROI1] text [size] [BOI1] ...) has a caption to drop.")
    start, stop = span
    return [*ids[:start], *ids[stop:]]


def image2text(tokenizer: CommandIds, codes: Sequence[int], text_ids: Sequence[int]) -> list[int]:
    """``[size] [BOI1] codes [EOI1] [ROI1] T`` (T may end with the caption end, see ``caption_end_id``)."""
    codes = _ids(codes)
    side = grid_side(len(codes))
    return [
        tokenizer[size_token(side)],
        tokenizer["[BOI1]"],
        *codes,
        tokenizer["[EOI1]"],
        tokenizer["[ROI1]"],
        *_ids(text_ids),
    ]


def super_resolution_prefix(tokenizer: CommandIds, text_ids: Sequence[int], side: int) -> list[int]:
    """``[ROI1] T [size] [BOI1]``: what precedes the low-resolution codes (``side`` = their grid's side)."""
    return [tokenizer["[ROI1]"], *_ids(text_ids), tokenizer[size_token(side)], tokenizer["[BOI1]"]]


def super_resolution_midfix(tokenizer: CommandIds, side: int) -> list[int]:
    """``[EOI1] [ROI2] [POS0] [size] [BOI2]``: the tokens between the low-res crop and the hi-res block."""
    return [tokenizer[name or size_token(side)] for name in SR_MIDFIX]


def super_resolution_row(
    tokenizer: CommandIds, text_ids: Sequence[int], side: int, crop: Sequence[int], block: Sequence[int]
) -> list[int]:
    """prefix + ``crop`` + midfix + ``block`` for a low-resolution grid of ``side``×``side`` codes."""
    return [
        *super_resolution_prefix(tokenizer, text_ids, side),
        *_ids(crop),
        *super_resolution_midfix(tokenizer, side),
        *_ids(block),
    ]


@dataclass(frozen=True)
class SRWindow:
    """One super-resolution window of an n×n low-resolution grid (n = ``side``), q = n/4.

    It conditions on the low-res crop ``low[q·row : q·row + n/2, q·column : q·column + n/2]`` and covers
    the hi-res block ``high[2q·row : 2q·row + n, 2q·column : 2q·column + n]``. At inference it fills only
    the block's first ``generated_rows`` hi-res rows, whole low-res rows (pairs of hi-res rows): the first
    window stops one low-res row below the windows' overlap, the first two window rows leave their last
    low-res row to the row below, and the last row goes to the bottom.
    """

    side: int
    row: int
    column: int
    generated_rows: int

    def crop(self, low: np.ndarray) -> np.ndarray:
        """The low-res crop of ``low`` ``[n, n]`` (a view; works for tensors too)."""
        step, half = self.side // 4, self.side // 2
        return low[step * self.row : step * self.row + half, step * self.column : step * self.column + half]

    def block(self, high: np.ndarray, rows: int | None = None) -> np.ndarray:
        """The first ``rows`` (default: all n) hi-res rows of this window's block of ``high`` ``[2n, 2n]``."""
        half = self.side // 2
        top, left = half * self.row, half * self.column
        return high[top : top + (self.side if rows is None else rows), left : left + self.side]


def check_super_resolution_side(side: int) -> None:
    """Raise an InputError unless a ``side``×``side`` low-resolution grid has windows and a size token."""
    super_resolution_windows(side)
    if side not in SIZE_TOKENS:
        raise InputError(
            f"No size token for {side}×{side} super-resolution windows; "
            f"sides with one are {sorted(SIZE_TOKENS)}."
        )


def super_resolution_windows(side: int) -> list[SRWindow]:
    """The 9 windows of an ``side``×``side`` low-resolution grid, in the order generation fills them.

    For side 32 the generated rows are the original's (0,0,18), (0,1,30), …, (2,2,32).
    """
    if side < 4 or side % 4:
        raise InputError(f"Super-resolution needs a low-resolution grid side divisible by 4, got {side}.")
    step, half = side // 4, side // 2
    first, upper, last = 2 * (step + 1), 2 * (half - 1), 2 * half
    windows = []
    for i, j in SR_WINDOW_ORDER:
        windows.append(SRWindow(side, i, j, first if (i, j) == (0, 0) else upper if i < 2 else last))
    return windows


def super_resolution_rows(
    tokenizer: CommandIds, text_ids: Sequence[int], low: Sequence[int], high: Sequence[int]
) -> list[list[int]]:
    """The 9 training rows of one image from its n×n codes ``low`` and 2n×2n codes ``high`` (row-major)."""
    side = grid_side(len(_ids(low)))
    low, high = np.asarray(low).reshape(side, side), np.asarray(high).reshape(2 * side, 2 * side)
    return [
        super_resolution_row(tokenizer, text_ids, side, window.crop(low), window.block(high))
        for window in super_resolution_windows(side)
    ]


def check_codes_per_side(layout: str, side: int) -> None:
    """Raise an InputError if ``layout`` cannot hold square images of ``side``² codes."""
    if layout == SUPER_RESOLUTION:
        check_super_resolution_side(side)
    elif side not in SIZE_TOKENS:
        raise InputError(
            f"The {layout} layout needs {sorted(SIZE_TOKENS)} codes per side (a size token), got {side}."
        )


def non_text_length(layout: str, side: int) -> int:
    """Tokens of one training row of ``layout`` that are not caption text (n = ``side``)."""
    codes = side * side
    if layout == SUPER_RESOLUTION:
        return 3 + len(SR_MIDFIX) + codes // 4 + codes
    return 4 + codes
