"""The animal-mnist silhouettes (10,000 white-on-black 28×28 images, 1,000 per animal) and their split.

The data ship inside the `animal-mnist==0.4` wheel (installed for the demo only, by
`env/install_demo_data.sh`) as two gzipped pickles. They are read directly: the package's own
loader imports TensorFlow. Samples with index % 10 == 9 are the test split (100 per animal), the rest train.
"""

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
from demo.vocabulary import ANIMALS

SPLITS = ("train", "test")
IMAGES_FILE = "animal_data_version_3.gz"
LABELS_FILE = "animal_label_version_3.gz"
SILHOUETTE_SIDE = 28
TEST_EVERY = 10  # sample i is in the test split when i % TEST_EVERY == TEST_EVERY - 1


class SilhouetteSourceError(InputError):
    """The animal-mnist data are missing or not in the expected format."""


@dataclass(frozen=True)
class Silhouettes:
    """Silhouettes `images` [n, 28, 28] uint8 (white on black) and `labels` [n] (in ANIMALS order)."""

    images: np.ndarray
    labels: np.ndarray


def default_source_dir() -> Path:
    """The data folder of the installed animal-mnist package (found without importing it)."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SilhouetteSourceError(
            "animal-mnist is not installed; run env/install_demo_data.sh (or pass the folder of "
            f"{IMAGES_FILE} and {LABELS_FILE})."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise SilhouetteSourceError(f"{path} does not exist.")
    try:
        with gzip.open(path, "rb") as handle:
            # A pickle from the installed, pinned animal-mnist wheel (or a test's own file): trusted input.
            array = pickle.load(handle)
    except (OSError, EOFError, pickle.UnpicklingError) as error:
        raise SilhouetteSourceError(f"{path} is not a gzipped pickle ({error}).") from None
    if not isinstance(array, np.ndarray):
        raise SilhouetteSourceError(f"{path} holds a {type(array).__name__}, not a numpy array.")
    return array


def load_silhouettes(source_dir: str | os.PathLike | None = None) -> Silhouettes:
    """Read the silhouettes and labels from `source_dir` (default: the installed package) and check them."""
    source_dir = Path(source_dir) if source_dir is not None else default_source_dir()
    images = _load_array(source_dir / IMAGES_FILE)
    labels = _load_array(source_dir / LABELS_FILE)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SILHOUETTE_SIDE,) * 2:
        raise SilhouetteSourceError(
            f"{source_dir / IMAGES_FILE}: expected uint8 [n, 28, 28], "
            f"got {images.dtype} {list(images.shape)}."
        )
    if labels.shape != images.shape[:1]:
        raise SilhouetteSourceError(
            f"{source_dir / LABELS_FILE}: {labels.shape[0] if labels.ndim else 0} labels for "
            f"{images.shape[0]} images."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(ANIMALS)):
        raise SilhouetteSourceError(
            f"{source_dir / LABELS_FILE}: labels must lie in [0, {len(ANIMALS)}), "
            f"found [{labels.min()}, {labels.max()}]."
        )
    return Silhouettes(images, labels.astype(np.int64))


def split_indices(silhouettes: Silhouettes, split: str, per_animal: int | None = None) -> np.ndarray:
    """Sample indices of `split`, ascending; with `per_animal`, only the first that many of each animal."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
    index = np.arange(len(silhouettes.labels))
    in_test = index % TEST_EVERY == TEST_EVERY - 1
    chosen = index[in_test] if split == "test" else index[~in_test]
    if per_animal is None:
        return chosen
    labels = silhouettes.labels[chosen]
    keep = np.zeros(len(chosen), dtype=bool)
    for animal in range(len(ANIMALS)):
        keep[np.flatnonzero(labels == animal)[:per_animal]] = True
    return chosen[keep]
