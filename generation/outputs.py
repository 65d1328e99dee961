"""Where generated images and text go, written atomically and never over another query's files.

Naming follows the original, with the overwrites removed:

* ``--debug``: one grid of every decoded image of every sample per query,
  ``{output-path}/{text[:20]}-{%m-%d-%H-%M-%S}.jpg`` (``{output-path}/{id}/...`` with ``--with-id``).
  Two queries with the same text in the same second get ``...-1.jpg``, ``...-2.jpg``.
* otherwise: ``{folder}/{i}.jpg`` for each sample and ``{folder}/concat.jpg`` (their grid), where the
  folder is ``{output-path}/{id}`` with ``--with-id`` and ``{output-path}/{text[:20]}`` without it (the
  original wrote every query to ``{output-path}/0.jpg``). An existing folder is never reused: the next
  free ``{name}-1``, ``{name}-2``, ... is taken.
* per-line results (captions, scores) go to one text file aligned with the input, line n for line n.

Images are clamped to [0, 1] when saved. The original min-max stretched each saved image (or grid) to
[0, 1] instead (``save_image(normalize=True)``), which changed colours and contrast per image.
Every file is written to a temporary name in the same folder and renamed, so no reader ever sees a
half-written file.
"""

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from common.atomic_files import atomic_write_text, numbered_names, write_atomic, write_new
from vqvae import to_pil

GRID_COLUMNS = 8
GRID_PADDING = 2
SLUG_LENGTH = 20
IMAGE_SUFFIX = ".jpg"


def slug(text: str, limit: int = SLUG_LENGTH) -> str:
    """The original's file-name stem ``text.replace('/', '')[:20]``, also without other unsafe characters.

    Backslashes, control characters and leading/trailing dots and spaces are dropped too, so the stem is
    always one plain name inside the output folder; an empty result becomes 'query'.
    """
    kept = "".join(ch for ch in text if ch not in "/\\" and ch.isprintable())
    return kept[:limit].strip(" .") or "query"


def timestamp() -> str:
    """The original's time stamp for debug grids: month-day-hour-minute-second."""
    return time.strftime("%m-%d-%H-%M-%S")


def same_size(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Images ``[3, H, W]`` or ``[1, 3, H, W]`` of possibly different sizes → one batch ``[n, 3, H, W]``.

    Smaller images are upsampled (nearest) to the largest, as the original did to show a 128² input
    beside its 256² super-resolution.
    """
    images = [image.reshape(-1, *image.shape[-3:]) for image in images]
    height = max(image.shape[-2] for image in images)
    width = max(image.shape[-1] for image in images)
    resized = [
        image if image.shape[-2:] == (height, width) else F.interpolate(image.float(), size=(height, width))
        for image in images
    ]
    return torch.cat([image.float() for image in resized])


def grid(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """The original's image grid (8 per row, 2 px black padding) of clamped images → ``[3, H', W']``."""
    return make_grid(same_size(images).clamp(0, 1), nrow=GRID_COLUMNS, padding=GRID_PADDING)


def new_folder(parent: Path, name: str) -> Path:
    """Create and return the first of ``parent/name``, ``parent/name-1``, ... that does not exist yet."""
    parent.mkdir(parents=True, exist_ok=True)
    for candidate in numbered_names(name):
        try:
            (parent / candidate).mkdir()
        except FileExistsError:
            continue
        return parent / candidate
    raise AssertionError("unreachable: numbered_names never ends")


def save_image(image: torch.Tensor, path: Path) -> Path:
    """Save one image ``[3, H, W]`` or ``[1, 3, H, W]`` (nominal range [0, 1], clamped) atomically.

    The format follows the suffix of ``path``.
    """
    picture = to_pil(image)
    return write_atomic(path, lambda temporary: picture.save(temporary))


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write_text(path, text)


class ImageWriter:
    """Saves each query's images under ``root`` by the naming rules in this module's docstring."""

    def __init__(self, root: str | os.PathLike, debug: bool = False):
        self.root = Path(root)
        self.debug = debug

    def save(
        self,
        samples: Sequence[torch.Tensor],
        debug_images: Sequence[torch.Tensor],
        label: str,
        query_id: str | None,
    ) -> list[Path]:
        """Save one query's images; returns the files written.

        ``samples``: the final image of each sample (``{i}.jpg``); ``debug_images``: every decoded image of
        every sample (the ``--debug`` grid); ``label``: the query text the names are made from.
        """
        if self.debug:
            if not debug_images:
                return []
            folder = self.root / query_id if query_id else self.root
            folder.mkdir(parents=True, exist_ok=True)
            picture = to_pil(grid(debug_images))
            stem = f"{slug(label)}-{timestamp()}"
            return [write_new(folder, stem, IMAGE_SUFFIX, lambda temporary: picture.save(temporary))]
        if not samples:
            return []
        folder = new_folder(self.root, query_id or slug(label))
        paths = [save_image(image, folder / f"{i}{IMAGE_SUFFIX}") for i, image in enumerate(samples)]
        paths.append(save_image(grid(samples), folder / f"concat{IMAGE_SUFFIX}"))
        return paths


class AlignedLines:
    """Result lines keyed by input line number, written as one file where line n answers input line n.

    Lines without a result (blank input lines) stay empty, so scores and captions never shift.
    """

    def __init__(self) -> None:
        self.lines: dict[int, str] = {}

    def record(self, number: int, line: str) -> None:
        """Set the result of input line ``number`` (1-based); it must be a single line."""
        self.lines[number] = " ".join(line.splitlines())

    def merge(self, other: dict[int, str]) -> None:
        """Add the lines another process recorded."""
        self.lines.update(other)

    def write(self, path: str | os.PathLike, total: int = 0) -> Path:
        """Write lines 1..max(total, last recorded) to ``path`` atomically."""
        count = max([total, *self.lines])
        return save_text("".join(f"{self.lines.get(n, '')}\n" for n in range(1, count + 1)), path)
