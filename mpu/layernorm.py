"""PB-relax LayerNorm, exactly as the released CogView weights were trained with it."""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """``LayerNorm(x / (max|x| / 8))`` with one max over the *whole* input tensor.

    This is the released code's PB-relax (the paper divides by ``max(x)``): it keeps fp16 inputs in
    range. Mathematically it equals a LayerNorm whose epsilon grows to ``eps * c**2`` with
    ``c = max|x| / 8``, so outputs depend very slightly on the other samples of a batch. The max is
    clamped to the dtype's smallest normal number, so an all-zero input gives zeros, not NaNs.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        scale = input.detach().abs().max() / 8
        scaled = input / scale.clamp_min(torch.finfo(input.dtype).tiny)
        return F.layer_norm(scaled, self.normalized_shape, self.weight, self.bias, self.eps)
