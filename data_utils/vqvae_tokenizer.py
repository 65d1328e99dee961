"""The image side of the unified tokenizer: a loaded VQ-VAE, or only its code count for pre-tokenised data."""

import os

import torch

import vqvae
from common.devices import resolve_device
from common.errors import InputError
from data_utils.layouts import grid_side


class NoImageTokenizerError(InputError):
    """An image had to be encoded or decoded but the tokenizer was built without a VQ-VAE."""


class VQVAETokenizer:
    """Images ↔ VQ-VAE codes with a model loaded from `model_path` (fp32, eval mode, on `device`)."""

    def __init__(self, model_path: str | os.PathLike, device: str | int | torch.device | None = "cpu"):
        self.device = resolve_device(device)
        self.model = vqvae.load_vqvae(model_path, device=self.device)

    @property
    def num_tokens(self) -> int:
        """Codebook size: the number of image tokens."""
        return self.model.n_embed

    @property
    def downsample_factor(self) -> int:
        """Pixels per code along each side (8 for the released model: 256² px → 32×32 codes)."""
        return self.model.downsample_factor

    def EncodeAsIds(self, img: torch.Tensor) -> torch.Tensor:
        """Normalised images [b, 3, H, W] → codes LongTensor [b, h*w] (raster order) on the model's device."""
        return vqvae.img2code(self.model, img.to(self.device))

    def DecodeIds(self, codes: list[int] | torch.Tensor) -> torch.Tensor:
        """The codes of one square image → de-normalised image [1, 3, H, W]."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.device).flatten()
        grid_side(codes.numel())
        return vqvae.code2img(self.model, codes.unsqueeze(0))

    def read_img(self, path: str | os.PathLike, img_size: int = 256) -> torch.Tensor:
        """Read an image file → normalised [1, 3, img_size, img_size] on the model's device."""
        return vqvae.read_img(path, img_size).to(self.device)


class PretokenizedImageTokenizer:
    """Just the number of image codes, for training on pre-tokenised data (the original `FakeTokenizer`)."""

    def __init__(self, num_tokens: int):
        self.num_tokens = num_tokens

    def EncodeAsIds(self, img: torch.Tensor) -> torch.Tensor:
        raise self._no_model()

    def DecodeIds(self, codes: list[int] | torch.Tensor) -> torch.Tensor:
        raise self._no_model()

    def read_img(self, path: str | os.PathLike, img_size: int = 256) -> torch.Tensor:
        raise self._no_model()

    @staticmethod
    def _no_model() -> NoImageTokenizerError:
        return NoImageTokenizerError(
            "This tokenizer has no image model (built with img_tokenizer_path=None); "
            "pass --img-tokenizer-path to encode, decode or read images."
        )
