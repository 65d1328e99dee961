"""Dropout whose keep-mask is cheap to draw on the CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element from the single-threaded Mersenne Twister
and saves a float mask for the backward. Training CogView-style models on the CPU drops out the attention
probabilities (heads × s² elements per layer), and that draw alone took about 11% of a 12-layer,
768-wide training step at sequence 1088 (2.1 of 18.7 s). Here four 16-bit uniform numbers come out of each
64-bit draw of the same default generator, the comparison runs multi-threaded, and the backward keeps a
bool mask (a quarter of the float mask's memory). The drop probability is quantised to a multiple of
2^-16 (0.1 becomes 6554/65536 = 0.100006), and kept values are scaled by the inverse of the quantised
keep probability, so the output stays unbiased.

Randomness still comes from ``torch``'s default CPU generator, so seeds, the model-parallel RNG
tracker's ``fork()`` and activation checkpointing's RNG replay work as with ``nn.Dropout``; CUDA tensors
go to ``F.dropout`` (its fused kernel is already fast).
"""

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # one uniform number per element: 16 bits of a 64-bit draw


def _keep_mask(shape: torch.Size, drop_levels: int) -> torch.Tensor:
    """A bool tensor of ``shape``, each element False with probability ``drop_levels / 2^16``."""
    numel = shape.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    uniform = words.view(torch.int16)[:numel].view(shape)  # uniform over [-2^15, 2^15)
    return uniform >= drop_levels - (1 << 15)


class _MaskedScale(torch.autograd.Function):
    """``x * mask * scale`` saving only the bool mask for the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.where(mask, x, 0.0).mul_(scale)  # scaled in place: one tensor made, not two

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, 0.0).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the cheap mask for floating-point CPU tensors."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.dtype.is_floating_point or p >= 1.0:
        return F.dropout(x, p, training)
    drop_levels = round(p * _LEVELS)
    if drop_levels == 0:
        return x
    mask = _keep_mask(x.shape, drop_levels)
    return _MaskedScale.apply(x, mask, _LEVELS / (_LEVELS - drop_levels))


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`dropout` (same attribute, no parameters or buffers)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return F.dropout(input, self.p, self.training, inplace=True)
        return dropout(input, self.p, self.training)
