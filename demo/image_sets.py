"""Images listed in a captions file (the preprocessing tool's input format), read once each as pixels."""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.errors import InputError
from preprocess.sources import FolderImages, Record, read_captions


class ImageSetError(InputError):
    """An image listed in a captions file that cannot be read."""


def load_records(captions: str | os.PathLike) -> list[Record]:
    """The records of a TSV/JSONL captions file (at least one)."""
    captions = Path(captions)
    records = read_captions(captions)
    if not records:
        raise ImageSetError(f"{captions} lists no images.")
    return records


def read_pixels(
    records: list[Record],
    image_root: str | os.PathLike,
    transform: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Each distinct record image → uint8 RGB [H, W, 3], optionally passed through `transform` in batches
    (e.g. a tokenizer round trip). An unreadable image raises ImageSetError naming it and its line."""
    source = FolderImages(image_root)
    first = {}
    for record in records:
        first.setdefault(record.image, record)
    names = list(first)
    pixels = {}
    with tqdm(total=len(names), desc="images", unit="img", disable=not progress) as bar:
        for start in range(0, len(names), batch_size):
            batch = names[start : start + batch_size]
            arrays = [_read(source, first[name]) for name in batch]
            pixels.update(zip(batch, transform(arrays) if transform else arrays, strict=True))
            bar.update(len(batch))
    return pixels


def _read(source: FolderImages, record: Record) -> np.ndarray:
    try:
        with source.open(record) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageSetError(f"{record.origin}: cannot read {record.image} ({error}).") from None
    if pixels.shape[0] != pixels.shape[1]:
        height, width = pixels.shape[:2]
        raise ImageSetError(f"{record.origin}: {record.image} is {width}×{height}, not square.")
    return pixels
