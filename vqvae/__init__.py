"""VQ-VAE image tokenizer: 256² px images ↔ 32×32 grids of codes from a codebook of 8192 (paper, sec. 2.2)."""

from vqvae.api import code2img, img2code, new_model
from vqvae.checkpoint import VQVAECheckpointError, load_vqvae, save_vqvae
from vqvae.images import (
    IMAGE_MEAN,
    IMAGE_STD,
    JPEG_OPTIONS,
    ImageReadError,
    denormalize,
    image_to_tensor,
    normalize,
    open_image,
    read_img,
    save_images,
    save_picture,
    to_pil,
)
from vqvae.model import VQVAE, Decoder, Encoder, Quantize

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "JPEG_OPTIONS",
    "VQVAE",
    "Decoder",
    "Encoder",
    "ImageReadError",
    "Quantize",
    "VQVAECheckpointError",
    "code2img",
    "denormalize",
    "image_to_tensor",
    "img2code",
    "load_vqvae",
    "new_model",
    "normalize",
    "open_image",
    "read_img",
    "save_images",
    "save_picture",
    "save_vqvae",
    "to_pil",
]
