"""magnify: the original's window list, coverage for any grid size, and a full run on a tiny model."""

import importlib

import pytest
import torch

from generation import filling_sequence, magnify, magnify_windows
from tests.test_filling import sampling_args, tiny_gpt

MAGNIFY_MODULE = importlib.import_module("generation.magnify")  # the package re-exports the function
ORIGINAL_WINDOWS = [
    (0, 0, 18),
    (0, 1, 30),
    (0, 2, 30),
    (1, 1, 30),
    (1, 0, 30),
    (1, 2, 30),
    (2, 0, 32),
    (2, 1, 32),
    (2, 2, 32),
]


def test_windows_for_a_32x32_grid_are_the_originals():
    assert magnify_windows(32) == ORIGINAL_WINDOWS


@pytest.mark.parametrize("side", [4, 8, 16, 32, 64])
def test_windows_cover_the_hi_res_grid_inside_its_bounds(side):
    step = side // 4
    covered = torch.zeros(2 * side, 2 * side, dtype=torch.int)
    for i, j, line in magnify_windows(side):
        assert 0 < line <= side
        top, left = 2 * step * i, 2 * step * j
        assert top + line <= 2 * side and left + side <= 2 * side
        assert step * i + side // 2 <= side and step * j + side // 2 <= side  # the low-res crop
        covered[top : top + line, left : left + side] += 1
    assert (covered > 0).all()


@pytest.mark.parametrize("side", [2, 6, 30])
def test_grid_sides_not_divisible_by_4_are_rejected(side):
    with pytest.raises(ValueError, match=f"divisible by 4, got {side}"):
        magnify_windows(side)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


@pytest.fixture(scope="module")
def model(tok):
    return tiny_gpt(len(tok) + (-len(tok)) % 128, positions=96)


def test_magnify_fills_every_code_and_respects_given_tokens(model, tok, monkeypatch):
    side = 8
    low = torch.randint(0, tok.num_image_tokens, (side * side,), generator=torch.Generator().manual_seed(0))
    prompt = [tok["[ROI1]"], *tok.EncodeAsIds("一只老虎"), tok["[TINY]"], tok["[BOI1]"]]
    midfix = [tok[name] for name in ("[EOI1]", "[ROI2]", "[POS0]", "[TINY]", "[BOI2]")]
    calls = []

    def recording_filling_sequence(model, seq, args, **kwargs):
        out = filling_sequence(model, seq, args, **kwargs)
        calls.append((seq.clone(), out.clone(), args.batch_size, args.max_inference_batch_size))
        return out

    monkeypatch.setattr(MAGNIFY_MODULE, "filling_sequence", recording_filling_sequence)
    args = sampling_args(batch_size=4, max_inference_batch_size=2, top_k=10)
    high = magnify(model, tok, low, torch.tensor(prompt), args, generator=torch.Generator().manual_seed(0))

    assert high.shape == (4 * side * side,) and (high >= 0).all() and (high < tok.num_image_tokens).all()
    assert args.batch_size == 4, "magnify must not change the caller's args"
    grid, low_grid = high.view(2 * side, 2 * side), low.view(side, side)
    generated_here = torch.zeros_like(grid)
    for (i, j, line), (seq, out, batch, max_batch) in zip(magnify_windows(side), calls, strict=True):
        assert batch == max_batch == 1 and out.shape == (1, seq.numel())
        crop = low_grid[2 * i : 2 * i + 4, 2 * j : 2 * j + 4].flatten().tolist()
        block_size = line * side
        assert seq[:-block_size].tolist() == prompt + crop + midfix
        block = seq[-block_size:]
        final = grid[4 * i : 4 * i + line, 4 * j : 4 * j + side].flatten()
        given = block >= 0
        assert torch.equal(block[given], final[given]), "a window did not see earlier windows' codes"
        assert torch.equal(out[0, -block_size:], final), "a window's output did not land in the grid"
        generated_here[4 * i : 4 * i + line, 4 * j : 4 * j + side] += (~given).view(line, side).int()
    assert (generated_here == 1).all(), "every hi-res code is generated exactly once"
    assert calls[0][0][-1] == -1 and (calls[-1][0] >= 0).sum() > len(prompt) + 16 + 5  # later windows reuse


def test_magnify_on_step_counts_all_windows_together(model, tok):
    side = 8
    low = torch.randint(0, tok.num_image_tokens, (side * side,), generator=torch.Generator().manual_seed(1))
    steps = []
    magnify(model, tok, low, [tok["[ROI1]"]], sampling_args(), on_step=lambda *step: steps.append(step))
    total = (2 * side) ** 2
    assert [done for done, _ in steps] == list(range(1, total + 1)), "one code per step, none counted twice"
    assert {whole for _, whole in steps} == {total}


def test_magnify_rejects_a_non_square_or_incomplete_low_res_grid(model, tok):
    args = sampling_args()
    with pytest.raises(ValueError, match="square grid of given low-res codes, got 60 ids"):
        magnify(model, tok, list(range(60)), [tok["[ROI1]"]], args)
    with pytest.raises(ValueError, match="square grid"):
        magnify(model, tok, [-1] * 64, [tok["[ROI1]"]], args)
    with pytest.raises(ValueError, match="No size token for 12×12"):
        magnify(model, tok, [1] * 144, [tok["[ROI1]"]], args)
