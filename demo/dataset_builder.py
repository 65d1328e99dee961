"""One split of the demo data set on disk, in the preprocessing tool's input format.

Layout of a split folder (e.g. `data/demo/train/`):

    images/00000.png ...    64×64 RGB composites, numbered in drawing order
    captions.tsv            `images/00000.png<TAB>caption`, two lines per image: Chinese, then English
    split.json              the options it was drawn with (a rerun with the same ones has nothing to do)

Composite i is copy i // n of the split's sample i % n (n samples; copies vary colours and placement).
For each composite the split's generator (seeded by (seed, split)) draws, in this order: the foreground
colour, the background colour among the other seven, dx, dy (`integers(-4, 5)` each). The output is a pure
function of the options, so a rebuilt split is byte-identical. It is written under `<folder>.partial` and
renamed into place when complete, so a folder that exists is always a finished split.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.errors import InputError
from demo.captions import caption
from demo.composition import MAX_OFFSET, compose
from demo.silhouettes import SPLITS, Silhouettes, split_indices
from demo.vocabulary import LANGUAGES, PALETTE, Scene

CAPTIONS_FILE = "captions.tsv"
IMAGES_DIR = "images"
SETTINGS_FILE = "split.json"


class SplitExistsError(InputError, FileExistsError):
    """The split folder already exists with other options (it is only ever written whole)."""


@dataclass(frozen=True)
class SplitConfig:
    """Which split to draw and how much of it: `copies` composites per silhouette, `per_animal` to cap the
    silhouettes per animal (a miniature), `seed` for colours and placement."""

    split: str
    copies: int = 1
    per_animal: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {', '.join(SPLITS)}.")
        if self.copies < 1:
            raise InputError(f"copies must be at least 1, got {self.copies}.")
        if self.per_animal is not None and self.per_animal < 1:
            raise InputError(f"per_animal must be at least 1, got {self.per_animal}.")


@dataclass(frozen=True)
class Composite:
    """One drawn image: its silhouette (sample index), scene and offset."""

    sample: int
    scene: Scene
    dx: int
    dy: int


def plan_split(silhouettes: Silhouettes, config: SplitConfig) -> list[Composite]:
    """The composites of a split, in drawing order (see the module docstring for the random draws)."""
    samples = split_indices(silhouettes, config.split, config.per_animal)
    rng = np.random.default_rng([config.seed, SPLITS.index(config.split)])
    plan = []
    for _ in range(config.copies):
        for sample in samples:
            foreground = int(rng.integers(len(PALETTE)))
            background = int(rng.integers(len(PALETTE) - 1))
            background += background >= foreground  # any colour but the foreground, uniformly
            dx, dy = (int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)) for _ in range(2))
            scene = Scene(int(silhouettes.labels[sample]), foreground, background)
            plan.append(Composite(int(sample), scene, dx, dy))
    return plan


def image_name(index: int) -> str:
    """Path of composite `index` inside the split folder."""
    return f"{IMAGES_DIR}/{index:05d}.png"


def _settings(config: SplitConfig, n_images: int) -> dict:
    return {**asdict(config), "images": n_images}


def write_split(
    silhouettes: Silhouettes, config: SplitConfig, folder: str | os.PathLike, progress: bool = True
) -> bool:
    """Draw the split into `folder` → True, or False if `folder` already holds it with the same options.

    A `folder` holding anything else raises SplitExistsError.
    """
    folder = Path(folder)
    plan = plan_split(silhouettes, config)
    settings = _settings(config, len(plan))
    if folder.exists():
        try:
            existing = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if existing == settings:
            return False
        raise SplitExistsError(
            f"{folder} already exists and was not drawn with these options; delete it to rebuild it."
        )
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted build: drawing is cheap, start afresh
    (partial / IMAGES_DIR).mkdir(parents=True)
    lines = []
    for index, item in enumerate(tqdm(plan, desc=f"demo {config.split}", unit="img", disable=not progress)):
        pixels = compose(silhouettes.images[item.sample], item.scene, item.dx, item.dy)
        Image.fromarray(pixels, "RGB").save(partial / image_name(index))
        lines += [f"{image_name(index)}\t{caption(item.scene, language)}\n" for language in LANGUAGES]
    with open(partial / CAPTIONS_FILE, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    (partial / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, folder)
    return True
