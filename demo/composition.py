"""Drawing one demo image: a silhouette in a palette colour on a canvas of another palette colour.

The 28×28 silhouette is upscaled to 48×48 (bilinear), thresholded at 128 to a mask and placed with its
top-left corner at (8 + dx, 8 + dy), dx, dy in [-4, 4]; so it lies inside rows and columns 4..59 and the
outer 4-pixel frame of the 64×64 canvas is pure background. Every pixel is exactly one of the two palette
colours (no anti-aliasing), which is what makes the colours checkable from the pixels.
"""

import numpy as np
from PIL import Image

from demo.vocabulary import PALETTE, Scene

CANVAS_SIDE = 64
MASK_SIDE = 48
MAX_OFFSET = 4
FRAME_WIDTH = 4  # background-only border of the canvas, in pixels
MASK_THRESHOLD = 128


def silhouette_mask(silhouette: np.ndarray) -> np.ndarray:
    """A 28×28 uint8 silhouette → its 48×48 boolean mask (bilinear upscale, then value ≥ 128)."""
    upscaled = Image.fromarray(silhouette, "L").resize((MASK_SIDE, MASK_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(upscaled) >= MASK_THRESHOLD


def compose(silhouette: np.ndarray, scene: Scene, dx: int, dy: int) -> np.ndarray:
    """The 64×64 RGB uint8 image [64, 64, 3] of `scene` drawn with `silhouette`, offset by (dx, dy)."""
    if not (-MAX_OFFSET <= dx <= MAX_OFFSET and -MAX_OFFSET <= dy <= MAX_OFFSET):
        raise ValueError(f"offset ({dx}, {dy}) is outside [-{MAX_OFFSET}, {MAX_OFFSET}].")
    canvas = np.empty((CANVAS_SIDE, CANVAS_SIDE, 3), dtype=np.uint8)
    canvas[:] = PALETTE[scene.background].rgb
    left = top = (CANVAS_SIDE - MASK_SIDE) // 2
    block = canvas[top + dy : top + dy + MASK_SIDE, left + dx : left + dx + MASK_SIDE]  # [48, 48, 3] view
    block[silhouette_mask(silhouette)] = PALETTE[scene.foreground].rgb
    return canvas
