"""Train the demo's SentencePiece text tokenizer on the captions of the demo's train split.

    python tools/train_demo_text_tokenizer.py --captions data/demo/train/captions.tsv \\
        --output pretrained/demo/demo_text.model

Use it wherever a text tokenizer is taken: `--text-tokenizer-path` (generation, training) or
`--txt-tokenizer-path` (preprocess_entry.py). The logic lives in `demo/text_tokenizer.py`.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import InputError
from demo.text_tokenizer import train_text_tokenizer
from preprocess.sources import read_captions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--captions", type=Path, required=True, help="TSV or JSONL captions file")
    parser.add_argument("--output", type=Path, required=True, help="SentencePiece model file to write")
    args = parser.parse_args(argv)
    try:
        records = read_captions(args.captions)
        model = train_text_tokenizer((record.caption for record in records), args.output)
    except InputError as error:
        print(f"train_demo_text_tokenizer: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.output}: {model.GetPieceSize()} pieces from {len(records)} captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
