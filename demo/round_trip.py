"""Images through an image tokenizer and back (VQ-VAE encode, decode), with what the trip lost.

The input is preprocessed exactly as training and preprocessing do (`vqvae.image_to_tensor`: resize to
the tokenizer's image size), and the output is what a generated image becomes on disk (clamped, 8-bit),
so scoring round-tripped composites gives the ceiling a perfect GPT could reach through this tokenizer.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

import vqvae


@dataclass
class RoundTrip:
    """A callable `list of uint8 [H, W, 3] → list of decoded uint8 [S, S, 3]` that keeps statistics."""

    model: vqvae.VQVAE
    image_size: int
    squared_error: float = 0.0  # summed over pixels and channels, in [0, 1] units
    values: int = 0
    codes_used: set[int] = field(default_factory=set)

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        inputs = torch.cat(
            [vqvae.image_to_tensor(Image.fromarray(image), self.image_size) for image in images]
        )  # [b, 3, S, S], normalised
        codes = vqvae.img2code(self.model, inputs)  # [b, (S/f)²]
        decoded = vqvae.code2img(self.model, codes).clamp(0, 1)  # [b, 3, S, S]
        target = vqvae.denormalize(inputs).clamp(0, 1)
        self.squared_error += float(((decoded - target) ** 2).sum())
        self.values += target.numel()
        self.codes_used.update(codes.unique().tolist())
        return [np.asarray(vqvae.to_pil(image)) for image in decoded]

    @property
    def psnr(self) -> float:
        """PSNR in dB over every image so far (against the input resized to `image_size`)."""
        return 10.0 * math.log10(1.0 / max(self.squared_error / max(self.values, 1), 1e-10))

    @property
    def codebook_usage(self) -> float:
        """Fraction of the codebook that appeared in any image so far."""
        return len(self.codes_used) / self.model.n_embed

    def summary_text(self) -> str:
        side = self.image_size // self.model.downsample_factor
        return (
            f"round trip at {self.image_size} px ({side}×{side} codes, codebook {self.model.n_embed}): "
            f"PSNR {self.psnr:.2f} dB, codebook usage {self.codebook_usage:.1%} "
            f"({len(self.codes_used)} codes)"
        )
