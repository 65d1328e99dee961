"""Sequence templates: exact ids of each layout, container types, and the get_tokenizer() default."""

import numpy as np
import pytest
import sentencepiece as spm
import torch

from data_utils.templates import Code2CodeTemplate, PureTextTemplate, TextCodeTemplate, concat_codes
from data_utils.unified_tokenizer import UnifiedTokenizer, get_tokenizer

ROI1, ROI2, SEP, PAD = 58199, 58200, 58202, 58192
BOI1, EOI1, BOI2, EOI2 = 58193, 58196, 58194, 58197
SMALL, BASE = 58207, 58208


def text_ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    return [i + 8192 for i in sp.EncodeAsIds(text)]


def test_text_code_template(real_tokenizer: UnifiedTokenizer, real_sp: spm.SentencePieceProcessor) -> None:
    code = list(range(100, 1124))
    expected = [ROI1, *text_ids(real_sp, "一只老虎在踢足球"), BASE, BOI1, *code, EOI1]
    as_list = TextCodeTemplate("一只老虎在踢足球", code, tokenizer=real_tokenizer)
    assert as_list == expected
    as_array = TextCodeTemplate("一只老虎在踢足球", np.array(code), tokenizer=real_tokenizer)
    assert isinstance(as_array, np.ndarray) and as_array.tolist() == expected
    # Pre-tokenised text (as stored in compact binary files) gives the same row.
    from_ids = TextCodeTemplate(
        np.array(text_ids(real_sp, "一只老虎在踢足球")), np.array(code), tokenizer=real_tokenizer
    )
    assert from_ids.tolist() == expected


def test_templates_default_to_the_process_tokenizer(
    fresh_tokenizer_singleton: None, real_tokenizer: UnifiedTokenizer, real_sp: spm.SentencePieceProcessor
) -> None:
    get_tokenizer(tokenizer=real_tokenizer)
    assert PureTextTemplate("你好") == [*text_ids(real_sp, "你好"), SEP]
    assert TextCodeTemplate("猫", list(range(64))) == [
        ROI1,
        *text_ids(real_sp, "猫"),
        58206,
        BOI1,
        *range(64),
        EOI1,
    ]


def test_code2code_template(real_tokenizer: UnifiedTokenizer, real_sp: spm.SentencePieceProcessor) -> None:
    low, high = torch.arange(256), torch.arange(1000, 2024)
    ids = Code2CodeTemplate("[ROI1] 一只猫 [ROI2] [POS0]", low, high, tokenizer=real_tokenizer)
    expected = [ROI1, *text_ids(real_sp, "一只猫"), ROI2, 58210, SMALL, BOI1, *range(256), EOI1]
    expected += [BASE, BOI2, *range(1000, 2024), EOI2]
    assert isinstance(ids, torch.Tensor) and ids.tolist() == expected
    given_ids = Code2CodeTemplate([ROI1, 9000], low.tolist(), high.tolist(), tokenizer=real_tokenizer)
    assert given_ids == [ROI1, 9000, *expected[len(text_ids(real_sp, "一只猫")) + 3 :]]


def test_pure_text_template(real_tokenizer: UnifiedTokenizer, real_sp: spm.SentencePieceProcessor) -> None:
    assert PureTextTemplate("A cat. 一只猫", tokenizer=real_tokenizer) == [
        *text_ids(real_sp, "A cat. 一只猫"),
        SEP,
    ]


@pytest.mark.parametrize(
    ("parts", "kind"),
    [
        (([1, 2], [3]), list),
        (([1, 2], np.array([3])), np.ndarray),
        ((np.array([1, 2]), torch.tensor([3])), torch.Tensor),
        ((torch.tensor([1, 2]), [3], np.array([4, 5])), torch.Tensor),
    ],
)
def test_concat_codes_types(parts: tuple, kind: type) -> None:
    result = concat_codes(*parts)
    assert isinstance(result, kind)
    expected = [int(i) for part in parts for i in (part.tolist() if hasattr(part, "tolist") else part)]
    assert list(map(int, result)) == expected
