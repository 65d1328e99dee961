"""Super-resolution: an n×n low-resolution code grid → 2n×2n codes, in 9 overlapping windows (§8.4)."""

import argparse
import copy
import math
from collections.abc import Sequence

import torch

from data_utils.unified_tokenizer import SIZE_TOKENS
from generation.filling import StepCallback, filling_sequence
from generation.sampling import Tokenizer
from model import GPT2Model


def magnify_windows(side: int) -> list[tuple[int, int, int]]:
    """The windows ``(i, j, line)`` in processing order for an ``side``×``side`` low-resolution grid.

    Window (i, j) conditions on the low-res crop ``C[q i : q i + side/2, q j : q j + side/2]`` (q = side/4)
    and fills the hi-res block ``M[2q i : 2q i + line, 2q j : 2q j + side]``. ``line`` counts hi-res rows,
    in whole low-res rows (pairs of hi-res rows): the first window stops one low-res row below the
    windows' overlap, the first two window rows leave their last low-res row to the row below, and the last
    row goes to the bottom. For side 32 this is the original's list (0,0,18), (0,1,30), …, (2,2,32).
    """
    if side < 4 or side % 4:
        raise ValueError(f"magnify needs a low-resolution grid side divisible by 4, got {side}.")
    step, half = side // 4, side // 2
    first, upper, last = 2 * (step + 1), 2 * (half - 1), 2 * half
    order = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    return [(i, j, first if (i, j) == (0, 0) else upper if i < 2 else last) for i, j in order]


def magnify(
    model: GPT2Model,
    tokenizer: Tokenizer,
    tokens_list: torch.Tensor | Sequence[int],
    text_token_list: torch.Tensor | Sequence[int],
    args: argparse.Namespace,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Generate the 2n×2n hi-res codes ``[(2n)²]`` of the n×n low-res codes ``tokens_list`` (row-major).

    Each window is one :func:`filling_sequence` call (one sample) on
    ``text_token_list + crop + [EOI1] [ROI2] [POS0] [size] [BOI2] + block``, where ``text_token_list`` is
    the prompt up to the low-res image (``[ROI1] text [BASE] [BOI1]`` in the released task), ``crop`` the
    window's (n/2)² low-res codes, ``[size]`` the size token of an n×n grid (``[BASE]`` for n = 32) and
    ``block`` the window's hi-res codes: those filled by earlier windows are given, the rest generated.
    Windows overlap, so later ones continue what earlier ones drew. Sampling reads ``args.temperature``,
    ``args.top_k`` and ``args.top_p``. ``on_step(done, total)`` follows all windows together: every hi-res
    code is generated exactly once, so ``total`` is (2n)² (see ``filling_sequence`` for its use).
    """
    low = torch.as_tensor(tokens_list, dtype=torch.long).flatten().cpu()
    side = math.isqrt(low.numel())
    if side * side != low.numel() or (low < 0).any():
        raise ValueError(f"magnify needs a square grid of given low-res codes, got {low.numel()} ids.")
    windows = magnify_windows(side)
    if side not in SIZE_TOKENS:
        raise ValueError(
            f"No size token for {side}×{side} hi-res windows; sides with one: {sorted(SIZE_TOKENS)}."
        )
    text = torch.as_tensor(text_token_list, dtype=torch.long).flatten().cpu()
    midfix = torch.tensor(
        [tokenizer[name] for name in ("[EOI1]", "[ROI2]", "[POS0]", SIZE_TOKENS[side], "[BOI2]")]
    )
    one_sample = copy.copy(args)
    one_sample.batch_size = one_sample.max_inference_batch_size = 1

    grid = low.view(side, side)
    high = torch.full((2 * side, 2 * side), -1, dtype=torch.long)  # [2n, 2n]
    step, half = side // 4, side // 2
    for i, j, line in windows:
        crop = grid[step * i : step * i + half, step * j : step * j + half]
        block = high[2 * step * i : 2 * step * i + line, 2 * step * j : 2 * step * j + side]  # a view
        seq = torch.cat([text, crop.flatten(), midfix, block.flatten()])
        filled = filling_sequence(
            model,
            seq,
            one_sample,
            tokenizer=tokenizer,
            generator=generator,
            progress=progress,
            on_step=_offset_steps(on_step, int((high >= 0).sum()), high.numel()),
        )
        block.copy_(filled[0, -block.numel() :].view_as(block))
    return high.flatten()


def _offset_steps(on_step: StepCallback | None, before: int, total: int) -> StepCallback | None:
    """``on_step`` of one window, reporting the ``before`` codes earlier windows made and the grid's total."""
    if on_step is None:
        return None
    return lambda done, _window_total: on_step(before + done, total)
