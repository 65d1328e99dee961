"""Turn image-caption pairs into a CogView token dataset (LMDB directory or compact `.bin`).

    python preprocess_entry.py --captions data/captions.tsv --image-root data/images \\
        --img-tokenizer-path pretrained/vqvae/vqvae_hard_biggerset_011.pt --output data/my_t2i.lmdb

Inputs: a captions file (TSV `path<TAB>caption` or JSONL `{"image": ..., "caption": ...}`) with the images
under `--image-root` (default: the captions file's folder), or `--zip` of images captioned by a `--captions`
file naming its members or else by their file stems. Rerun the same command after an interruption to resume.
The logic lives in the `preprocess` package.
"""

import argparse
import sys
from pathlib import Path

from common.devices import parse_device
from common.errors import InputError
from common.paths import DEFAULT_VQVAE_PATH
from preprocess import LAYOUTS, PreprocessConfig, Preprocessor, summary_text


def build_parser() -> argparse.ArgumentParser:
    """The command line (underscore spellings of the original are accepted as aliases)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    inputs = parser.add_argument_group("input")
    inputs.add_argument("--captions", type=Path, help="TSV or JSONL (.jsonl) captions file")
    inputs.add_argument("--image-root", type=Path, help="folder the caption paths are relative to")
    inputs.add_argument(
        "--zip", dest="zip_path", type=Path, help="zip of images (captions: --captions or stems)"
    )
    output = parser.add_argument_group("output")
    output.add_argument("--output", type=Path, required=True, help="LMDB directory, or a file ending in .bin")
    output.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="text2image",
        help="row layout: text2image (pretraining), image2text (caption model), super-resolution",
    )
    output.add_argument(
        "--max-seq-len",
        type=int,
        help="captions are cut so a row fits (default 1089; 1345 for super-resolution)",
    )
    output.add_argument("--overwrite", action="store_true", help="replace an existing or partial output")
    tokenizers = parser.add_argument_group("tokenizers")
    tokenizers.add_argument(
        "--img-tokenizer-path",
        "--img_tokenizer_path",
        type=Path,
        default=DEFAULT_VQVAE_PATH,
        help="VQ-VAE weights",
    )
    tokenizers.add_argument(
        "--txt-tokenizer-path", type=Path, help="SentencePiece model (default: cog-pretrain)"
    )
    tokenizers.add_argument(
        "--encode-size",
        "--encode_size",
        type=int,
        default=32,
        help="codes per image side; the image size is this × the VQ-VAE's down-sampling (32 → 256 px)",
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--batch-size", type=int, default=8, help="images encoded together")
    runtime.add_argument("--num-workers", type=int, default=2, help="processes reading images")
    runtime.add_argument(
        "--device", type=parse_device, help="'cpu', 'cuda:1' or a GPU index (default: a GPU if any, else CPU)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = PreprocessConfig(**vars(args))
    try:
        summary = Preprocessor(config).run()
    except (InputError, OSError) as error:
        print(f"preprocess_entry.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    print(summary_text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
