"""Draw the demo data set: colourised animal-mnist silhouettes with Chinese and English captions.

    python tools/build_demo_data.py --output data/demo            # data/demo/train and data/demo/test

Each split folder holds `images/*.png` and `captions.tsv` (two captions per image), ready for
`preprocess_entry.py --captions data/demo/train/captions.tsv` and `tools/train_vqvae.py --images
data/demo/train/images`. Needs animal-mnist (`bash env/install_demo_data.sh`) unless --source names a
folder with its two data files. Rerunning with the same options does nothing; the logic lives in `demo/`.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import InputError
from demo.dataset_builder import SplitConfig, write_split
from demo.silhouettes import SPLITS, load_silhouettes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, required=True, help="folder that receives train/ and test/")
    parser.add_argument(
        "--source", type=Path, help="folder of the animal-mnist data files (default: installed)"
    )
    parser.add_argument("--train-copies", type=int, default=3, help="composites per train silhouette")
    parser.add_argument("--test-copies", type=int, default=1, help="composites per test silhouette")
    parser.add_argument("--per-animal", type=int, help="use only the first N silhouettes of each animal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    copies = {"train": args.train_copies, "test": args.test_copies}
    try:
        silhouettes = load_silhouettes(args.source)
        for split in args.splits:
            config = SplitConfig(split, copies[split], args.per_animal, args.seed)
            folder = args.output / split
            wrote = write_split(silhouettes, config, folder)
            print(f"{folder}: {'written' if wrote else 'already built with these options'}")
    except InputError as error:
        print(f"build_demo_data: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
