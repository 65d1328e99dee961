"""Lay out the first sample of every prompt of a ``--with-id`` run as one picture (the README's samples).

    python tools/demo_samples_picture.py --prompts demo/eval_prompts.tsv --samples samples_demo \\
        --output demo/samples.png

Tiles follow the prompts file's order, ``--columns`` per row (8: ``demo/eval_prompts.tsv`` lists every
animal with the eight foreground colours in turn, so rows are animals and columns colours), each enlarged
``--scale`` times with nearest-neighbour so the codes' pixels stay visible. Written atomically.
"""

import argparse
import sys
from pathlib import Path

from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.atomic_files import write_atomic
from common.errors import InputError
from tools.eval_demo import sample_records

GAP = 2  # pixels between tiles, in the picture's background grey
BACKGROUND = (128, 128, 128)


def first_samples(prompts: Path, samples: Path) -> list[Path]:
    """The first sample image of each prompt, in the prompts file's order."""
    chosen: dict[str, Path] = {}
    for record in sample_records(prompts, samples):
        path = samples / record.image
        chosen.setdefault(path.parent.name, path)
    return list(chosen.values())


def picture(images: list[Image.Image], columns: int, scale: int) -> Image.Image:
    """The images (all of one size) as rows of ``columns`` tiles, ``scale`` times enlarged."""
    width, height = images[0].size
    if any(image.size != (width, height) for image in images):
        raise InputError("the samples are not all of one size")
    tile_w, tile_h = width * scale, height * scale
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * (tile_w + GAP) + GAP, rows * (tile_h + GAP) + GAP), BACKGROUND)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        tile = image.convert("RGB").resize((tile_w, tile_h), Image.NEAREST)
        canvas.paste(tile, (GAP + column * (tile_w + GAP), GAP + row * (tile_h + GAP)))
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=Path, required=True, help="id<TAB>prompt file of the run")
    parser.add_argument("--samples", type=Path, required=True, help="output folder of that run")
    parser.add_argument("--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--columns", type=int, default=8, help="tiles per row (default 8)")
    parser.add_argument("--scale", type=int, default=2, help="enlargement of each tile (default 2)")
    args = parser.parse_args(argv)
    if args.columns < 1 or args.scale < 1:
        parser.error("--columns and --scale must be at least 1")
    try:
        images = []
        for path in first_samples(args.prompts, args.samples):
            with Image.open(path) as image:
                images.append(image.copy())
        result = picture(images, args.columns, args.scale)
    except (InputError, OSError) as error:
        print(f"demo_samples_picture.py: error: {error}", file=sys.stderr)
        return 2
    write_atomic(args.output, lambda path: result.save(path, format="PNG", optimize=True))
    print(f"wrote {args.output} ({len(images)} samples, {result.width}×{result.height} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
