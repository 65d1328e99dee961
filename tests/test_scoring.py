"""inverse_prompt_score against a hand computation from per-row full-forward log-softmaxes."""

import pytest
import torch

from generation import inverse_prompt_score, text_start
from tests.test_filling import tiny_gpt


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def model(tok):
    return tiny_gpt(len(tok) + (-len(tok)) % 128)


def candidates(tok, prefix: list[int], count: int = 3, side: int = 4) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    caption = tok.EncodeAsIds("一只老虎在踢足球")
    rows = []
    for _ in range(count):
        image = torch.randint(0, tok.num_image_tokens, (side * side,), generator=generator).tolist()
        rows.append([*prefix, tok["[TINY]"], tok["[BOI1]"], *image, tok["[EOI1]"], tok["[ROI1]"], *caption])
    return rows


def hand_score(model, tok, row: list[int], first_text: int) -> float:
    """Sum over k ≥ first_text of log softmax(logits at k-1 with image ids at −inf)[row[k]], batch 1."""
    with torch.no_grad():
        logits = model(torch.tensor([row]), torch.arange(len(row))[None], 0)[0][0].double()  # [L, V]
    total = 0.0
    for k in range(first_text, len(row)):
        step = logits[k - 1].clone()
        step[: tok.num_image_tokens] = -float("inf")
        total += float(torch.log_softmax(step, dim=0)[row[k]])
    return total


def test_scores_equal_the_hand_computation(model, tok):
    rows = candidates(tok, [])
    scores = inverse_prompt_score(model, torch.tensor(rows), tokenizer=tok)
    first_text = 2 + 16 + 2  # [TINY] [BOI1] 16 codes [EOI1] [ROI1]
    assert text_start(rows[0], tok) == first_text - 1
    expected = torch.tensor([hand_score(model, tok, row, first_text) for row in rows], dtype=torch.float64)
    assert scores.shape == (3,)
    assert torch.allclose(scores.double(), expected, rtol=1e-5, atol=1e-4)
    assert len(set(scores.tolist())) == 3  # different images, different scores


def test_text_starts_after_the_roi1_that_follows_the_image(model, tok):
    prefix = [tok["[ROI1]"], *tok.EncodeAsIds("猫")]  # an earlier [ROI1] must not be taken
    rows = candidates(tok, prefix, count=2, side=8)
    first_text = len(prefix) + 2 + 64 + 2
    assert text_start(rows[1], tok) == first_text - 1
    scores = inverse_prompt_score(model, rows, tokenizer=tok)
    expected = torch.tensor([hand_score(model, tok, row, first_text) for row in rows], dtype=torch.float64)
    assert torch.allclose(scores.double(), expected, rtol=1e-5, atol=1e-4)


def test_bad_rows_give_one_clear_error(model, tok):
    rows = candidates(tok, [], count=2)
    with pytest.raises(ValueError, match="sequence 1 has 24 tokens but sequence 0 has 25"):
        inverse_prompt_score(model, [rows[0], rows[1][:-1]], tokenizer=tok)
    no_text_marker = [t for t in rows[0] if t != tok["[ROI1]"]]
    with pytest.raises(ValueError, match=r"no \[ROI1\] after its \[EOI1\]"):
        inverse_prompt_score(model, [no_text_marker], tokenizer=tok)
    with pytest.raises(ValueError, match="negative"):
        inverse_prompt_score(model, [[*rows[0][:-1], -1]], tokenizer=tok)
