"""A stand-in for animal-mnist's data files, so the demo's tests need neither the package nor its size.

Class k is a filled ellipse (k even) or rectangle (k odd) whose aspect ratio depends on k // 2, so a
classifier can tell them apart; each sample is jittered by a pixel. Samples are sorted by class, as in
animal-mnist.
"""

import gzip
import pickle
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from demo.silhouettes import IMAGES_FILE, LABELS_FILE


def fake_silhouette(label: int, rng: random.Random) -> np.ndarray:
    """A 28×28 uint8 white-on-black shape of class `label` (0..9)."""
    image = Image.new("L", (28, 28), 0)
    half_width, half_height = 3 + 2 * (label // 2), 11 - 2 * (label // 2)
    cx, cy = 14 + rng.randint(-1, 1), 14 + rng.randint(-1, 1)
    box = (cx - half_width, cy - half_height, cx + half_width, cy + half_height)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if label % 2 else draw.ellipse)(box, fill=255)
    return np.asarray(image)


def write_fake_animal_mnist(folder: Path, per_class: int = 20, seed: int = 0) -> Path:
    """Write IMAGES_FILE and LABELS_FILE with `per_class` samples of each of the 10 classes → `folder`."""
    rng = random.Random(seed)
    labels = np.repeat(np.arange(10, dtype=np.int64), per_class)
    images = np.stack([fake_silhouette(int(label), rng) for label in labels])
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in ((IMAGES_FILE, images), (LABELS_FILE, labels)):
        with gzip.open(folder / name, "wb") as handle:
            pickle.dump(array, handle)
    return folder
