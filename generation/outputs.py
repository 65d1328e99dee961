"""Where generated images and text go, written atomically and never over another query's files.

Naming follows the original, with the overwrites removed:

* ``--debug``: one grid of every decoded image of every sample per query,
  ``{output-path}/{text[:20]}-{%m-%d-%H-%M-%S}.jpg`` (``{output-path}/{id}/...`` with ``--with-id``).
  Two queries with the same text in the same second get ``...-1.jpg``, ``...-2.jpg``.
* otherwise: ``{folder}/{i}.jpg`` for each sample and ``{folder}/concat.jpg`` (their grid), where the
  folder is ``{output-path}/{id}`` with ``--with-id`` and ``{output-path}/{text[:20]}`` without it (the
  original wrote every query to ``{output-path}/0.jpg``). An existing folder is never reused: the next
  free ``{name}-1``, ``{name}-2``, ... is taken. The folder is written as ``.{name}.incomplete-...`` and
  renamed when complete, so it appears whole or not at all (a crash leaves only the hidden, so-named one).
* per-line results (captions, scores) go to one text file aligned with the input, line n for line n,
  appended as the run goes (``generation.results``).

Images are clamped to [0, 1] when saved. The original min-max stretched each saved image (or grid) to
[0, 1] instead (``save_image(normalize=True)``), which changed colours and contrast per image. JPEGs are
written at full colour resolution and quality (``vqvae.JPEG_OPTIONS``), not at PIL's lossy defaults as
the original's were.
Every file is written to a temporary name in the same folder and renamed, so no reader ever sees a
half-written file.
"""

import errno
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from common.atomic_files import fsync_directory, numbered_names, write_atomic, write_new
from vqvae import save_picture, to_pil

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
    """The original's image grid of clamped images → ``[3, H', W']``: ``torchvision.utils.make_grid``'s.

    8 per row with 2 px of black around and between them; a single image comes back as it is, without
    padding, as make_grid returns it. Written here so that generation does not import torchvision, which
    takes as long to import as torch itself.
    """
    batch = same_size(images).clamp(0, 1)  # [n, 3, H, W]
    if batch.size(0) == 1:
        return batch[0]
    count, channels, height, width = batch.shape
    columns = min(GRID_COLUMNS, count)
    rows = -(-count // columns)
    cell_height, cell_width = height + GRID_PADDING, width + GRID_PADDING
    canvas = batch.new_zeros(channels, rows * cell_height + GRID_PADDING, columns * cell_width + GRID_PADDING)
    for index, image in enumerate(batch):
        row, column = divmod(index, columns)
        top, left = row * cell_height + GRID_PADDING, column * cell_width + GRID_PADDING
        canvas[:, top : top + height, left : left + width] = image
    return canvas


def incomplete_folder(parent: Path, name: str) -> Path:
    """A new hidden folder in which a query's images are written before :func:`publish_folder`.

    Its name, ``.{name}.incomplete-...``, marks it as unfinished if a crash leaves it behind.
    """
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = parent / f".{name}.incomplete-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
        except FileExistsError:
            continue
        return staging


def publish_folder(staging: Path, parent: Path, name: str) -> Path:
    """Rename the finished folder ``staging`` to the first free one of ``parent/name``, ``name-1``, ...

    So a query's folder appears whole or not at all, and never replaces or joins an existing one (a
    rename onto a folder that is not empty fails, so concurrent runs cannot collide either).
    """
    for candidate in numbered_names(name):
        target = parent / candidate
        if target.exists():
            continue
        try:
            os.rename(staging, target)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):  # taken since the check
                continue
            raise
        fsync_directory(parent)
        return target
    raise AssertionError("unreachable: numbered_names never ends")


def save_image(image: torch.Tensor, path: Path) -> Path:
    """Save one image ``[3, H, W]`` or ``[1, 3, H, W]`` (nominal range [0, 1], clamped) atomically.

    The format follows the suffix of ``path``.
    """
    picture = to_pil(image)
    return write_atomic(path, lambda temporary: save_picture(picture, temporary))


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
            return [write_new(folder, stem, IMAGE_SUFFIX, lambda temporary: save_picture(picture, temporary))]
        if not samples:
            return []
        name = query_id or slug(label)
        staging = incomplete_folder(self.root, name)
        try:
            names = [
                save_image(image, staging / f"{i}{IMAGE_SUFFIX}").name for i, image in enumerate(samples)
            ]
            names.append(save_image(grid(samples), staging / f"concat{IMAGE_SUFFIX}").name)
            folder = publish_folder(staging, self.root, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
        return [folder / file_name for file_name in names]
