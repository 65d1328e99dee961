"""Reading a demo image's scene back from its pixels: background, foreground colour and silhouette mask.

The background is the palette colour most of the frame's pixels are nearest to (the frame is the outer
4/64 of the side: pure background in every composite). The inner pixels not nearest to the background are
the foreground's; with too few of them there is no foreground. Its colour is the palette colour that, mixed
with the background in some proportion, explains those pixels best: a decoder blurs the silhouette's edge
into blends of the two colours (red on blue gives purplish pixels), which a plain vote over nearest palette
colours would count against the true foreground. The silhouette mask is each pixel's foreground share
(0 = background, 1 = foreground, a blurred edge in between), box-resized to the classifier's input size
and thresholded at one half: a binary mask, so that the classifier judges the shape and not how soft its
edge is (a 64 px composite reduced to 32 px and a decoder's 32 px output differ mostly there). Works on
any square size and on decoded, blurred or JPEG-compressed images, since every decision snaps to the
palette.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from demo.composition import CANVAS_SIDE, FRAME_WIDTH
from demo.vocabulary import PALETTE

PALETTE_RGB = np.array([colour.rgb for colour in PALETTE], dtype=np.float32)  # [8, 3]
CLASSIFIER_SIDE = 32  # masks are compared at 32×32 whatever the image size
MIN_FOREGROUND_FRACTION = 0.01  # of the inner pixels; the smallest silhouette in animal-mnist covers more
MAX_RESIDUAL = 60.0**2  # squared RGB distance: a pixel worse explained than this counts as this (outliers)


@dataclass(frozen=True)
class ImageReading:
    """What the pixels say: palette indices of the colours (foreground None if absent) and the mask."""

    background: int
    foreground: int | None
    mask: np.ndarray  # [CLASSIFIER_SIDE, CLASSIFIER_SIDE] float32, 1 = foreground, 0 = background


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image (any mode) or uint8/float [H, W, 3] array in 0..255 → float32 [H, W, 3]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square RGB image [H, H, 3], got shape {list(image.shape)}.")
    return image.astype(np.float32)


def nearest_palette(pixels: np.ndarray) -> np.ndarray:
    """Palette index nearest (Euclidean RGB) to each pixel of [..., 3] → [...] int64."""
    # |p - c|² = |p|² - 2 p·c + |c|², and |p|² is the same for every c: one matrix product.
    scores = pixels @ PALETTE_RGB.T - 0.5 * (PALETTE_RGB**2).sum(-1)  # [..., 8], larger = nearer
    return scores.argmax(-1)


def frame_width(side: int) -> int:
    """Width of the background-only frame of an image `side` pixels wide (4 px at 64)."""
    return max(1, side * FRAME_WIDTH // CANVAS_SIDE)


def _majority(indices: np.ndarray) -> int:
    """The most frequent palette index."""
    return int(np.bincount(indices.reshape(-1), minlength=len(PALETTE)).argmax())


def foreground_share(pixels: np.ndarray, foreground: int, background: int) -> np.ndarray:
    """How much of each pixel [..., 3] is foreground, in [0, 1]: its position along the segment from the
    background's RGB to the foreground's (a blend at a blurred edge is partly both)."""
    base = PALETTE_RGB[background]
    direction = PALETTE_RGB[foreground] - base
    return np.clip((pixels - base) @ direction / (direction @ direction), 0.0, 1.0)


def blend_foreground(pixels: np.ndarray, background: int) -> int:
    """The palette colour c ≠ background whose blends with the background fit `pixels` [n, 3] best.

    A pixel's misfit is its squared distance to the segment from the background's RGB to c's (capped at
    MAX_RESIDUAL); the colour with the least total misfit wins.
    """
    base = PALETTE_RGB[background]
    best, best_misfit = -1, np.inf
    for colour in range(len(PALETTE)):
        if colour == background:
            continue
        direction = PALETTE_RGB[colour] - base
        share = foreground_share(pixels, colour, background)  # [n]
        residual = ((pixels - base - share[:, None] * direction) ** 2).sum(-1)
        misfit = np.minimum(residual, MAX_RESIDUAL).sum()
        if misfit < best_misfit:
            best, best_misfit = colour, misfit
    return best


def resize_mask(mask: np.ndarray, side: int = CLASSIFIER_SIDE) -> np.ndarray:
    """A boolean or [0, 1] mask [H, H] → float32 [side, side], box-filtered (area average)."""
    image = Image.fromarray(mask.astype(np.float32), "F")
    return np.asarray(image.resize((side, side), Image.Resampling.BOX), dtype=np.float32)


def read_image(image: Image.Image | np.ndarray) -> ImageReading:
    """Background, foreground and silhouette mask of a demo image (see the module docstring)."""
    pixels = as_rgb_array(image)
    width = frame_width(pixels.shape[0])
    labels = nearest_palette(pixels)  # [H, H]
    inner = np.zeros(labels.shape, dtype=bool)
    inner[width:-width, width:-width] = True
    background = _majority(labels[~inner])
    others = pixels[inner & (labels != background)]  # [n, 3]
    if len(others) < MIN_FOREGROUND_FRACTION * inner.sum():
        return ImageReading(background, None, np.zeros((CLASSIFIER_SIDE,) * 2, dtype=np.float32))
    foreground = blend_foreground(others, background)
    share = resize_mask(foreground_share(pixels, foreground, background))
    return ImageReading(background, foreground, (share >= 0.5).astype(np.float32))
