"""The sampling step: per-row top-k / top-p, temperature, draw statistics, the allowed-id state machine."""

import math

import pytest
import torch

from generation import InvalidSlices, sample, top_k_logits

INF = float("inf")

# Three rows with different known distributions (no ties), in shuffled id order.
PROBS = torch.tensor(
    [
        [0.10, 0.50, 0.05, 0.30, 0.05 - 1e-3, 1e-3],
        [0.02, 0.08, 0.60, 0.20, 0.06, 0.04],
        [0.25, 0.05, 0.15, 0.01, 0.30, 0.24],
    ],
    dtype=torch.float64,
)


def kept(logits: torch.Tensor) -> list[list[int]]:
    return [sorted(torch.nonzero(row > -INF).flatten().tolist()) for row in logits]


def test_top_k_keeps_the_k_largest_of_each_row():
    logits = PROBS.log()
    assert kept(top_k_logits(logits.clone(), top_k=2)) == [[1, 3], [2, 3], [0, 4]]
    assert kept(top_k_logits(logits.clone(), top_k=1)) == [[1], [2], [4]]
    assert kept(top_k_logits(logits.clone(), top_k=99)) == [list(range(6))] * 3


def test_top_k_keeps_ties_at_the_threshold():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])
    assert kept(top_k_logits(logits, top_k=2)) == [[0, 2, 3]]


def test_top_p_per_row_on_a_batch():
    # row 0 sorted: .50 .30 .10 … → mass before .10 is .80 > .7: keep {.50, .30}
    # row 1 sorted: .60 .20 … → mass before .20 is .60 > .5: keep {.60} only
    # row 2 sorted: .30 .25 .24 .15 … → masses before: 0, .30, .55, .79 (≤ .8), .94: keep four
    logits = PROBS.log()
    filtered = top_k_logits(logits.clone(), top_p=0.7)
    assert kept(filtered)[0] == [1, 3]
    per_row = [
        kept(top_k_logits(logits[i : i + 1].clone(), top_p=p))[0] for i, p in enumerate((0.7, 0.5, 0.8))
    ]
    assert per_row == [[1, 3], [2], [0, 2, 4, 5]]
    batch = top_k_logits(logits.clone(), top_p=0.8)
    assert kept(batch)[2] == [0, 2, 4, 5]
    for row in range(3):  # the batch result equals the batch-1 result, row by row
        assert torch.equal(batch[row], top_k_logits(logits[row : row + 1].clone(), top_p=0.8)[0])
    filtered_values = batch[batch > -INF]
    assert torch.equal(filtered_values, logits[batch > -INF])  # kept logits are untouched


def test_top_p_always_keeps_the_most_likely_token():
    logits = PROBS.log()
    assert kept(top_k_logits(logits.clone(), top_p=1e-9)) == [[1], [2], [4]]


def test_top_k_then_top_p_on_the_renormalised_distribution():
    # row 2 after top-3: .30 .25 .24 renormalised → .380 .316 .304; masses before: 0, .380, .696
    # p = 0.6 keeps the first two; p = 0.7 keeps all three
    logits = PROBS[2:].log()
    assert kept(top_k_logits(logits.clone(), top_k=3, top_p=0.6)) == [[0, 4]]
    assert kept(top_k_logits(logits.clone(), top_k=3, top_p=0.7)) == [[0, 4, 5]]
    assert kept(top_k_logits(logits.clone(), top_k=3, top_p=0.7, filter_value=-1e4)) == [list(range(6))]


def test_sample_returns_ids_and_log_probs_of_the_tempered_filtered_distribution():
    logits = PROBS.log().float()
    ids, log_probs = sample(
        logits.clone(), temperature=0.5, top_k=3, generator=torch.Generator().manual_seed(0)
    )
    reference = torch.log_softmax(top_k_logits(logits.clone() / 0.5, top_k=3), dim=-1)
    assert ids.shape == log_probs.shape == (3,)
    assert torch.allclose(log_probs, reference.gather(1, ids[:, None]).squeeze(1))
    assert all(reference[row, ids[row]] > -INF for row in range(3))


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = counts.sum() * probs
    statistic = ((counts - expected) ** 2 / expected).sum()
    degrees = torch.tensor((probs.numel() - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(degrees, statistic / 2))


def test_sampled_frequencies_match_the_filtered_distribution():
    draws = 20000
    logits = PROBS.log().repeat_interleave(draws, dim=0).float()  # [3·draws, 6]
    generator = torch.Generator().manual_seed(1234)
    ids, _ = sample(logits, temperature=1.3, top_k=4, top_p=0.9, generator=generator)
    for row in range(3):
        target = torch.softmax(top_k_logits(PROBS[row : row + 1].log() / 1.3, top_k=4, top_p=0.9), dim=-1)[0]
        counts = torch.bincount(ids[row * draws : (row + 1) * draws], minlength=6).double()
        support = target > 0
        assert counts[~support].sum() == 0, f"row {row} drew a filtered id"
        assert support.sum() >= 2
        assert chi_square_p_value(counts[support], target[support]) > 1e-3, (row, counts, target)


def test_the_frequency_check_can_fail():
    # the same statistic rejects the draws when compared with the unfiltered distribution
    draws = 20000
    logits = PROBS[1:2].log().repeat(draws, 1).float()
    ids, _ = sample(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=6).double()
    assert chi_square_p_value(counts[[2, 3]], PROBS[1, [2, 3]] / PROBS[1, [2, 3]].sum()) > 1e-3
    assert chi_square_p_value(counts, PROBS[1]) < 1e-6


def test_sample_with_a_seeded_generator_is_reproducible():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    first = sample(logits.clone(), generator=torch.Generator().manual_seed(7))[0]
    second = sample(logits.clone(), generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(first, second)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def test_invalid_slices_state_machine(tok):
    image, total, command = tok.num_image_tokens, len(tok), tok["[PAD]"]
    state = InvalidSlices(tok)
    text_only, image_only, after_image = (image, total), (0, image), (image, command)
    assert state.allowed == text_only
    assert state.slices() == [slice(0, image), slice(total, None)]
    transitions = [
        (tok["[ROI1]"], text_only),
        (image + 5, text_only),
        (tok["[BOI1]"], image_only),
        (3, image_only),
        (tok["[EOI1]"], after_image),
        (tok["[ROI1]"], after_image),
        (tok["[BOI2]"], image_only),
        (tok["[ROI2]"], image_only),
        (tok["[EOI2]"], after_image),
        (tok["[BOI3]"], after_image),  # slot 3 never changed the state in the original
        (tok["[BOI1]"], image_only),
        (tok["[EOI3]"], image_only),
    ]
    for token, allowed in transitions:
        state.update(token)
        assert state.allowed == allowed, token


def test_invalid_slices_mask_covers_a_vocab_range_and_extra_slices(tok):
    image, total = tok.num_image_tokens, len(tok)
    state = InvalidSlices(tok, extra=[slice(3, 5), slice(image + 2, image + 4), slice(total - 1, None)])
    padded = total + (-total) % 128
    full = state.mask_(torch.zeros(2, padded))
    expected = torch.zeros(padded, dtype=torch.bool)
    expected[image:total] = True
    expected[image + 2 : image + 4] = False
    expected[total - 1] = False
    assert torch.equal(full[0] > -INF, expected) and torch.equal(full[1] > -INF, expected)
    state.update(tok["[BOI1]"])
    low, high = state.allowed
    ranged = state.mask_(torch.zeros(1, high - low), first_id=low)  # logits of ids [0, image) only
    assert kept(ranged) == [[i for i in range(image) if i not in (3, 4)]]
    state.update(tok["[EOI1]"])
    low, high = state.allowed
    ranged = state.mask_(torch.zeros(1, high - low), first_id=low)
    assert kept(ranged) == [[i - low for i in range(low, high) if i not in (image + 2, image + 3)]]
    assert math.isinf(state.mask_(torch.zeros(1, padded))[0, tok["[PAD]"]])
