"""The composites of a demo captions file (e.g. `data/demo/test/captions.tsv`), one per image, with the scene
their captions describe: the ground truth the caption measurements check against.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError
from demo.captions import parse_caption
from demo.image_sets import ImageSetError, load_records
from demo.vocabulary import Scene


class CompositeSetError(InputError):
    """A captions file whose lines are not the demo's: a caption outside its templates, an image missing."""


@dataclass(frozen=True)
class Composite:
    """One image of the file: its name as listed, its path, its scene and its captions in file order."""

    name: str
    path: Path
    scene: Scene
    captions: tuple[str, ...]


def load_composites(captions: str | os.PathLike) -> list[Composite]:
    """The distinct images of a demo captions file, in the order they first appear.

    Every caption must be one of the demo's two templates and all captions of an image must describe the
    same scene; image paths are relative to the file's folder and must exist (checked here, before any
    model is loaded).
    """
    captions = Path(captions)
    records = load_records(captions)
    scenes: dict[str, Scene] = {}
    texts: dict[str, list[str]] = {}
    for record in records:
        scene = parse_caption(record.caption)
        if scene is None:
            raise CompositeSetError(f"{record.origin}: {record.caption!r} is not a demo caption.")
        first = scenes.setdefault(record.image, scene)
        if scene != first:
            raise CompositeSetError(
                f"{record.origin}: {record.caption!r} describes another scene than the earlier captions of "
                f"{record.image}."
            )
        texts.setdefault(record.image, []).append(record.caption)
    composites = []
    for name, scene in scenes.items():
        path = captions.parent / name
        if not path.is_file():
            raise ImageSetError(f"{captions}: the image {name} does not exist ({path}).")
        composites.append(Composite(name, path, scene, tuple(texts[name])))
    return composites


def spread(count: int, limit: int | None) -> list[int]:
    """`limit` indices of `range(count)` evenly spread over it (all of them when `limit` is None or not
    smaller): a split is ordered by silhouette, so its first images would all show the same animal."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}.")
    return [index * count // limit for index in range(limit)]
