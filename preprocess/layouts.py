"""The training-row layouts the preprocessing tool emits (unified ids; T = text ids, n = codes per side).

text2image        `[ROI1] T [size] [BOI1] codes(n²) [EOI1]`             (pretraining; `TextCodeTemplate`)
image2text        `[size] [BOI1] codes(n²) [EOI1] [ROI1] T`             (the caption / post-selection model)
super-resolution  per window, exactly what the released SR model sees at inference (reference §6.4, §8.4):
                  `[ROI1] T [BASE] [BOI1] low(n/2 × n/2) [EOI1] [ROI2] [POS0] [BASE] [BOI2] high(n × n)`
                  where `low` is a crop of the image's n×n codes and `high` the matching block of the 2n×2n
                  codes of the same image at twice the size. The 3×3 windows step by n/4 low-res (n/2
                  high-res) codes, giving 9 rows per image, in the order the generator visits them. There is
                  no `[EOI2]`: inference never reaches one. Both size tokens are `[BASE]`, as in the SR query.
                  (The original repository's own SR preprocessing wrote a different, obsolete layout.)
"""

import numpy as np

from common.errors import InputError
from data_utils.datasets import BINARY_TEXT_LENGTH
from data_utils.templates import TextCodeTemplate, concat_codes
from data_utils.unified_tokenizer import SIZE_TOKENS, UnifiedTokenizer

LAYOUTS = ("text2image", "image2text", "super-resolution")
DEFAULT_MAX_SEQ_LEN = {"text2image": 1089, "image2text": 1089, "super-resolution": 1345}
# The order `generation/magnify` fills the 3×3 windows in (row, column).
SR_WINDOWS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def check_codes_per_side(layout: str, codes_per_side: int) -> None:
    """Raise a ValueError if `layout` cannot hold square images of `codes_per_side`² codes."""
    if layout == "super-resolution":
        if codes_per_side % 4:
            raise InputError(
                f"The super-resolution layout needs codes per side divisible by 4, got {codes_per_side}."
            )
    elif codes_per_side not in SIZE_TOKENS:
        raise InputError(
            f"The {layout} layout needs {sorted(SIZE_TOKENS)} codes per side (a size token), "
            f"got {codes_per_side}."
        )


def non_text_length(layout: str, codes_per_side: int) -> int:
    """Tokens of one row that are not caption text."""
    codes = codes_per_side**2
    if layout == "super-resolution":
        return 8 + codes // 4 + codes
    return 4 + codes


def text2image_row(tokenizer: UnifiedTokenizer, text_ids: list[int], codes: np.ndarray) -> np.ndarray:
    """`[ROI1] text [size] [BOI1] codes [EOI1]` as int64."""
    return np.asarray(TextCodeTemplate(np.asarray(text_ids, dtype=np.int64), codes, tokenizer=tokenizer))


def image2text_row(tokenizer: UnifiedTokenizer, text_ids: list[int], codes: np.ndarray) -> np.ndarray:
    """`[size] [BOI1] codes [EOI1] [ROI1] text` as int64."""
    return np.asarray(concat_codes(tokenizer.wrap_code(codes), np.array([tokenizer["[ROI1]"], *text_ids])))


def super_resolution_rows(
    tokenizer: UnifiedTokenizer, text_ids: list[int], low: np.ndarray, high: np.ndarray
) -> list[np.ndarray]:
    """The 9 window rows of one image from its n×n codes `low` [n*n] and 2n×2n codes `high` [4*n*n]."""
    n = int(np.sqrt(low.size))
    low, high = low.reshape(n, n), high.reshape(2 * n, 2 * n)
    prefix = [tokenizer["[ROI1]"], *text_ids, tokenizer["[BASE]"], tokenizer["[BOI1]"]]
    midfix = [tokenizer[name] for name in ("[EOI1]", "[ROI2]", "[POS0]", "[BASE]", "[BOI2]")]
    rows = []
    for i, j in SR_WINDOWS:
        crop = low[i * n // 4 : i * n // 4 + n // 2, j * n // 4 : j * n // 4 + n // 2]  # [n/2, n/2]
        block = high[i * n // 2 : i * n // 2 + n, j * n // 2 : j * n // 2 + n]  # [n, n]
        rows.append(np.concatenate([prefix, crop.reshape(-1), midfix, block.reshape(-1)]).astype(np.int64))
    return rows


def binary_row(text_ids: list[int], codes: np.ndarray) -> np.ndarray:
    """A compact binary row: text ids right-padded with −1 to 64 slots, then the codes (text2image only)."""
    text = np.full(BINARY_TEXT_LENGTH, -1, dtype=np.int64)
    text[: len(text_ids)] = text_ids
    return np.concatenate([text, codes.astype(np.int64)])
