"""Uploaded images: size, type and pixel limits, then decoding into the VQ-VAE's normalised tensor.

Uploads stay in memory: their bytes are decoded by PIL from a buffer and nothing the client sends (not
even the file name, used only in messages) is ever used as a path. The type is decided from the bytes,
not from the client's Content-Type or file name.
"""

import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image

from vqvae.images import ImageReadError, image_to_tensor

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
ACCEPTED = ", ".join(ALLOWED_FORMATS)
MIB = 1 << 20


class UploadError(ValueError):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (each enforced with a one-sentence 4xx)."""

    max_prompt_chars: int = 200
    max_images: int = 8
    max_candidates: int = 32  # images drawn for one text2image request: num_images × post_select
    max_upload_bytes: int = 8 * MIB
    max_image_pixels: int = 25_000_000

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: every allowed image at the size limit, plus room for the form fields."""
        return self.max_images * self.max_upload_bytes + MIB


def decode_upload(data: bytes, name: str, image_size: int, limits: Limits) -> torch.Tensor:
    """The bytes of an uploaded image → normalised ``[1, 3, image_size, image_size]``.

    Refuses (:class:`UploadError`) an empty or oversized upload (413), bytes that are not an image of an
    :data:`ALLOWED_FORMATS` type (415) and an image with more than ``limits.max_image_pixels`` pixels (413),
    the last before decoding it, so a small file that would expand to gigabytes is never decoded.
    """
    if not data:
        raise UploadError(400, f"{name}: the file is empty")
    if len(data) > limits.max_upload_bytes:
        limit = limits.max_upload_bytes / MIB
        raise UploadError(413, f"{name}: the file is {len(data) / MIB:.1f} MiB; the limit is {limit:g} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(413, f"{name}: the image has too many pixels") from None
    except (OSError, ValueError, SyntaxError):
        raise UploadError(415, f"{name}: the file is not an image ({ACCEPTED} are accepted)") from None
    with image:
        if image.format not in ALLOWED_FORMATS:
            raise UploadError(415, f"{name}: a {image.format} image; {ACCEPTED} are accepted")
        width, height = image.size
        if width * height > limits.max_image_pixels:
            limit = limits.max_image_pixels
            raise UploadError(413, f"{name}: {width}×{height} pixels; the limit is {limit:,} pixels")
        try:
            return image_to_tensor(image, image_size, name=name)
        except ImageReadError as error:
            raise UploadError(
                415, f"{name}: the file cannot be decoded ({error.__cause__ or error})"
            ) from None
