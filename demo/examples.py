"""The example images in `demo/examples/`, the inputs of `input_select.txt` and `input_image2text.txt`.

A few scenes chosen to make post-selection's choice visible (a red cat on blue beside a red dog on blue, a
green cat on blue and a red cat on yellow; pairs with the colours swapped), each drawn by the demo's own
composition code with the first test-split silhouette of its animal, centred. So the images are a pure
function of animal-mnist and come from no silhouette the model was trained on; `tools/make_demo_examples.py`
writes them, and a test regenerates them and compares the bytes.
"""

import os
from pathlib import Path

from PIL import Image

from demo.composition import compose
from demo.silhouettes import Silhouettes, split_indices
from demo.vocabulary import ANIMALS, PALETTE, Scene

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def _scene(foreground: str, animal: str, background: str) -> Scene:
    colours = [colour.en for colour in PALETTE]
    return Scene([a.en for a in ANIMALS].index(animal), colours.index(foreground), colours.index(background))


EXAMPLE_SCENES = (
    _scene("red", "cat", "blue"),
    _scene("red", "dog", "blue"),
    _scene("green", "cat", "blue"),
    _scene("red", "cat", "yellow"),
    _scene("yellow", "dog", "green"),
    _scene("yellow", "horse", "green"),
    _scene("white", "elephant", "black"),
    _scene("black", "elephant", "white"),
    _scene("purple", "bird", "orange"),
    _scene("orange", "bird", "purple"),
)


def example_name(scene: Scene) -> str:
    """The file name of a scene's example image, e.g. `red_cat_on_blue.png`."""
    return f"{PALETTE[scene.foreground].en}_{ANIMALS[scene.animal].en}_on_{PALETTE[scene.background].en}.png"


def write_examples(silhouettes: Silhouettes, folder: str | os.PathLike = EXAMPLES_DIR) -> list[Path]:
    """Draw every example scene into `folder` as a 64×64 PNG → the files written, in EXAMPLE_SCENES order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first_of_animal = {}
    for sample in split_indices(silhouettes, "test", per_animal=1):
        first_of_animal[int(silhouettes.labels[sample])] = int(sample)
    paths = []
    for scene in EXAMPLE_SCENES:
        pixels = compose(silhouettes.images[first_of_animal[scene.animal]], scene, dx=0, dy=0)
        path = folder / example_name(scene)
        Image.fromarray(pixels, "RGB").save(path)
        paths.append(path)
    return paths
