"""Write the example images of `input_select.txt` and `input_image2text.txt` (demo/examples/*.png).

    python tools/make_demo_examples.py                 # needs animal-mnist (bash env/install_demo_data.sh)

Deterministic: a rerun writes the same bytes. The scenes and how they are drawn are in `demo.examples`.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import InputError
from demo.examples import EXAMPLES_DIR, write_examples
from demo.silhouettes import load_silhouettes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=EXAMPLES_DIR, help="folder (default: demo/examples)")
    parser.add_argument(
        "--source", type=Path, help="folder of the animal-mnist data files (default: installed)"
    )
    args = parser.parse_args(argv)
    try:
        paths = write_examples(load_silhouettes(args.source), args.output)
    except InputError as error:
        print(f"make_demo_examples: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(paths)} example images in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
