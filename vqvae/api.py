"""The original `vqvae.api` surface: build the released model, images → codes, codes → images."""

import math

import torch

from vqvae.images import denormalize
from vqvae.model import VQVAE


def new_model() -> VQVAE:
    """The released configuration: 256² px → 32×32 codes, codebook 8192 × 256, 19,034,883 parameters."""
    return VQVAE(
        in_channel=3, channel=512, n_res_block=0, n_res_channel=32, embed_dim=256, n_embed=8192, stride=6
    )


def _model_device(model: VQVAE) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def img2code(model: VQVAE, img: torch.Tensor) -> torch.Tensor:
    """Normalised images [b, 3, H, W] → codes LongTensor [b, (H/f)·(W/f)], raster order (f = downsampling).

    Runs without gradients. Use an eval-mode model (as `load_vqvae` returns): in training mode the forward
    also moves the EMA codebook.
    """
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"img2code expects images of shape [b, 3, H, W], got {list(img.shape)}.")
    _, _, ids = model.encode(img.to(_model_device(model), torch.float32))  # [b, h, w]
    return ids.reshape(ids.shape[0], -1)


@torch.no_grad()
def code2img(model: VQVAE, code: torch.Tensor) -> torch.Tensor:
    """Codes [b, h, w] or [b, h·w] (square, h = w = √(h·w)) → de-normalised images [b, 3, f·h, f·w].

    Values are nominally in [0, 1] but are NOT clamped, like the original's; clamp when saving (see
    `vqvae.images.save_images`). Unlike the original, the 2-D input is reshaped per sample, so any batch size
    decodes correctly.
    """
    code = torch.as_tensor(code, device=_model_device(model))
    if code.dim() == 2:
        side = math.isqrt(code.shape[1])
        if side * side != code.shape[1]:
            raise ValueError(f"code2img got {code.shape[1]} codes per image, which is not a square number.")
        code = code.view(code.shape[0], side, side)  # [b, h, w]
    if code.dim() != 3:
        raise ValueError(f"code2img expects codes of shape [b, h, w] or [b, h*w], got {list(code.shape)}.")
    if code.numel() and (code.min() < 0 or code.max() >= model.n_embed):
        raise ValueError(
            f"code2img got codes in [{int(code.min())}, {int(code.max())}], "
            f"outside the codebook [0, {model.n_embed})."
        )
    return denormalize(model.decode_code(code.long()))
