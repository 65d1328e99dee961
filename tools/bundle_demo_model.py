"""Bundle a trained demo GPT: its weights, in the released checkpoint layout, and the manifest that names it.

    python tools/bundle_demo_model.py data/demo/gpt/demo_gpt12-01-09-45 --bundle pretrained/demo \\
        --num-layers 6 --hidden-size 192 --num-attention-heads 6 --max-position-embeddings 280 --image-size 32

writes ``{bundle}/cogview-demo/`` (tracker + ``{iteration}/mp_rank_00_model_states.pt``: the weights of
the newest checkpoint of the training run, model-parallel size 1, without optimizer or RNG state, so
``generate_samples.py --load {bundle}/cogview-demo`` reads it) and ``{bundle}/models.args``, the manifest
the launchers read (one model for text2image, its post-selection scorer and the caption roles). The
tokenizers ``demo_text.model`` and ``vqvae_demo.pt`` must already be in the bundle. An existing model
folder is replaced only once the new one is complete.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.atomic_files import atomic_write_text, rename_into_place
from common.errors import InputError
from data_utils import UnifiedTokenizer
from model.checkpoint import reshard_checkpoint

MODEL_FOLDER = "cogview-demo"
MANIFEST = "models.args"
TOKENIZERS = ("demo_text.model", "vqvae_demo.pt")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the training run, the bundle folder and the model's architecture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="pretrain_gpt2.py save folder (with its tracker file)")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (holds the tokenizers)")
    for flag in ("--num-layers", "--hidden-size", "--num-attention-heads", "--max-position-embeddings"):
        parser.add_argument(flag, type=int, required=True, help="as the model was trained")
    parser.add_argument("--image-size", type=int, required=True, help="pixels per side of the images")
    return parser.parse_args(argv)


def manifest_text(args: argparse.Namespace) -> str:
    """``models.args``: the architecture and tokenizers (paths relative to the bundle), then each role."""
    architecture = (
        f"--num-layers {args.num_layers} --hidden-size {args.hidden_size} "
        f"--num-attention-heads {args.num_attention_heads} "
        f"--max-position-embeddings {args.max_position_embeddings}"
    )
    return (
        "# The bundled demo GPT (scripts/train_demo.sh): one model for text2image and captions.\n"
        f"common: {architecture}\n"
        f"common: --img-tokenizer-path {TOKENIZERS[1]} --text-tokenizer-path {TOKENIZERS[0]} "
        f"--image-size {args.image_size}\n"
        f"text2image: --load {MODEL_FOLDER} --post-select-load {MODEL_FOLDER}\n"
        f"caption: --load {MODEL_FOLDER}\n"
    )


def bundle(args: argparse.Namespace) -> Path:
    """Write the model folder and the manifest; returns the model folder."""
    missing = [name for name in TOKENIZERS if not (args.bundle / name).is_file()]
    if missing:
        raise InputError(f"{args.bundle} lacks the tokenizer {missing[0]}; bundle the tokenizers first.")
    tokenizer = UnifiedTokenizer(
        args.bundle / TOKENIZERS[1], "cpu", txt_tokenizer_path=args.bundle / TOKENIZERS[0]
    )
    target = args.bundle / MODEL_FOLDER
    staging = args.bundle / f".{MODEL_FOLDER}.new-{os.getpid()}"
    reshard_checkpoint(args.run, staging, 1, num_tokens=tokenizer.num_tokens)
    if target.exists():
        shutil.rmtree(target)
    rename_into_place(staging, target)
    atomic_write_text(args.bundle / MANIFEST, manifest_text(args))
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        target = bundle(args)
    except InputError as error:
        print(f"bundle_demo_model.py: error: {error}", file=sys.stderr)
        return 2
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    print(f"bundled {target} ({size / 2**20:.1f} MiB) and {args.bundle / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
