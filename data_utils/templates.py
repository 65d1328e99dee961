"""The original's training-sequence templates: how text and image codes are laid out (`data_utils.layouts`).

Each template takes the tokenizer explicitly (`tokenizer=`) and falls back to the process-wide one from
`get_tokenizer()`, as the original did.
"""

import numpy as np
import torch

from data_utils.unified_tokenizer import Code, UnifiedTokenizer, tokenizer_or_default


def concat_codes(*codes: Code) -> Code:
    """Concatenate id sequences: a tensor if any part is one (on the last tensor's device), else a numpy array
    if any part is one, else a list."""
    tensors = [code for code in codes if isinstance(code, torch.Tensor)]
    if tensors:
        device = tensors[-1].device
        return torch.cat([torch.as_tensor(code, device=device).flatten() for code in codes])
    if any(isinstance(code, np.ndarray) for code in codes):
        return np.concatenate([np.asarray(code).flatten() for code in codes])
    return [int(i) for code in codes for i in code]


def TextCodeTemplate(text: str | Code, code: Code, *, tokenizer: UnifiedTokenizer | None = None) -> Code:
    """`[ROI1] text [size] [BOI1] code [EOI1]`, the text-to-image training row.

    `text` is a string (encoded here) or already unified text ids (e.g. from a compact binary file).
    """
    tokenizer = tokenizer_or_default(tokenizer)
    roi = [tokenizer["[ROI1]"]]
    text_ids = roi + tokenizer(text) if isinstance(text, str) else concat_codes(np.array(roi), text)
    return concat_codes(text_ids, tokenizer.wrap_code(code))


def Code2CodeTemplate(
    text: str | Code, code0: Code, code1: Code, *, tokenizer: UnifiedTokenizer | None = None
) -> Code:
    """`text [size] [BOI1] code0 [EOI1] [size] [BOI2] code1 [EOI2]`.

    A string `text` goes through `parse_query`, so it may contain command names (e.g. "[ROI1] 一只猫 [ROI2]").
    """
    tokenizer = tokenizer_or_default(tokenizer)
    text_ids = tokenizer.parse_query(text) if isinstance(text, str) else text
    return concat_codes(text_ids, tokenizer.wrap_code(code0), tokenizer.wrap_code(code1, idx=2))


def PureTextTemplate(text: str, *, tokenizer: UnifiedTokenizer | None = None) -> list[int]:
    """`text [SEP]`, the unit of the text-only language-model data."""
    tokenizer = tokenizer_or_default(tokenizer)
    return [*tokenizer(text), tokenizer["[SEP]"]]
