"""Super-resolution: an n×n low-resolution code grid → 2n×2n codes, in 9 overlapping windows.

The windows, their order and the tokens of each window's sequence are the super-resolution layout of
``data_utils.layouts``, the same rows the SR model is trained on.
"""

import argparse
import dataclasses
import math
from collections.abc import Sequence

import torch

from data_utils import layouts
from generation.filling import StepCallback, filling_sequence
from generation.sampling import SamplingConfig, Tokenizer
from model import GPT2Model


def magnify_windows(side: int) -> list[tuple[int, int, int]]:
    """The windows ``(i, j, line)`` in processing order for an ``side``×``side`` low-resolution grid.

    Window (i, j) conditions on the low-res crop ``C[q i : q i + side/2, q j : q j + side/2]`` (q = side/4)
    and fills the hi-res block ``M[2q i : 2q i + line, 2q j : 2q j + side]`` (see ``layouts.SRWindow``).
    For side 32 this is the original's list (0,0,18), (0,1,30), …, (2,2,32).
    """
    return [(w.row, w.column, w.generated_rows) for w in layouts.super_resolution_windows(side)]


def magnify(
    model: GPT2Model,
    tokenizer: Tokenizer,
    tokens_list: torch.Tensor | Sequence[int],
    text_token_list: torch.Tensor | Sequence[int],
    args: SamplingConfig | argparse.Namespace,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Generate the 2n×2n hi-res codes ``[(2n)²]`` of the n×n low-res codes ``tokens_list`` (row-major).

    Each window is one :func:`filling_sequence` call (one sample) on
    ``text_token_list + crop + [EOI1] [ROI2] [POS0] [size] [BOI2] + block``, where ``text_token_list`` is
    the prompt up to the low-res image (``layouts.super_resolution_prefix``: ``[ROI1] text [size] [BOI1]``),
    ``crop`` the window's (n/2)² low-res codes, ``[size]`` the size token of an n×n grid (``[BASE]`` for
    n = 32) and ``block`` the window's hi-res codes: those filled by earlier windows are given, the rest
    generated. Windows overlap, so later ones continue what earlier ones drew. ``args`` (a
    ``SamplingConfig`` or the original's argparse namespace) gives ``temperature``, ``top_k`` and ``top_p``;
    each window draws one sample. ``on_step(done, total)`` follows all windows together: every hi-res code
    is generated exactly once, so ``total`` is (2n)² (see ``filling_sequence`` for its use).
    """
    low = torch.as_tensor(tokens_list, dtype=torch.long).flatten().cpu()
    side = math.isqrt(low.numel())
    if side * side != low.numel() or (low < 0).any():
        raise ValueError(f"magnify needs a square grid of given low-res codes, got {low.numel()} ids.")
    layouts.check_super_resolution_side(side)
    text = torch.as_tensor(text_token_list, dtype=torch.long).flatten().cpu()
    midfix = torch.tensor(layouts.super_resolution_midfix(tokenizer, side))
    one_sample = dataclasses.replace(SamplingConfig.of(args), batch_size=1, max_inference_batch_size=1)

    grid = low.view(side, side)
    high = torch.full((2 * side, 2 * side), -1, dtype=torch.long)  # [2n, 2n]
    for window in layouts.super_resolution_windows(side):
        block = window.block(high, rows=window.generated_rows)  # a view
        seq = torch.cat([text, window.crop(grid).flatten(), midfix, block.flatten()])
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
