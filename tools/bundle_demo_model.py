"""Bundle a trained demo GPT: its weights, in the released checkpoint layout, and the manifest that names it.

    python tools/bundle_demo_model.py data/demo/gpt/demo_gpt12-01-09-45 --bundle pretrained/demo \\
        --num-layers 6 --hidden-size 192 --num-attention-heads 6 --max-position-embeddings 280 --image-size 32
    python tools/bundle_demo_model.py data/demo/sr/demo_sr12-01-11-13 --bundle pretrained/demo \\
        --model super-resolution --num-layers 4 --hidden-size 128 --num-attention-heads 4 \\
        --max-position-embeddings 264 --max-position-embeddings-finetune 344 --image-size 32

The main model (``--model main``, the default) goes to ``{bundle}/cogview-demo/``, named in the manifest
``{bundle}/models.args`` for text2image, its post-selection scorer and the caption roles; the
super-resolution model (``--model super-resolution``) to ``{bundle}/cogview-demo-sr/``, named for the
super-resolution role with its own architecture (its line's arguments override ``common:``). Each folder
holds a tracker and ``{iteration}/mp_rank_00_model_states.pt``: the weights of the newest checkpoint of the
training run, model-parallel size 1, without optimizer or RNG state, so ``generate_samples.py --load``
reads it. Bundling one model keeps the other's manifest lines, so the two can be bundled in either order
(and the manifest comes out the same). The tokenizers ``demo_text.model`` and ``vqvae_demo.pt`` must
already be in the bundle. An existing model folder is replaced only once the new one is complete.
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

MAIN, SUPER_RESOLUTION = "main", "super-resolution"
MODEL_FOLDERS = {MAIN: "cogview-demo", SUPER_RESOLUTION: "cogview-demo-sr"}
MANIFEST = "models.args"
TOKENIZERS = ("demo_text.model", "vqvae_demo.pt")
SR_HEADER = "# The bundled super-resolution GPT (scripts/train_demo.sh), with its own architecture."
SR_ROLE = "super-resolution:"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the training run, the bundle folder, which model and its architecture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="pretrain_gpt2.py save folder (with its tracker file)")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (holds the tokenizers)")
    parser.add_argument(
        "--model",
        choices=tuple(MODEL_FOLDERS),
        default=MAIN,
        help="main: text2image and captions (default); super-resolution: the magnify model",
    )
    for flag in ("--num-layers", "--hidden-size", "--num-attention-heads", "--max-position-embeddings"):
        parser.add_argument(flag, type=int, required=True, help="as the model was trained")
    parser.add_argument(
        "--max-position-embeddings-finetune",
        type=int,
        help="as the model was trained (super-resolution: its sequence length, required)",
    )
    parser.add_argument("--image-size", type=int, required=True, help="pixels per side of the images")
    parser.add_argument(
        "--sampling",
        default="",
        help="the main model's text2image defaults, e.g. \"--top_k 30 --guidance-scale 3\" (the launchers' "
        "released-model settings do not suit a small demo model; a user's own arguments still come last)",
    )
    args = parser.parse_args(argv)
    if (args.model == SUPER_RESOLUTION) != (args.max_position_embeddings_finetune is not None):
        parser.error("--max-position-embeddings-finetune goes with --model super-resolution, and only there.")
    if args.sampling and args.model != MAIN:
        parser.error("--sampling sets the main model's text2image defaults; it goes with --model main.")
    return args


def architecture(args: argparse.Namespace) -> str:
    """The architecture arguments of the model being bundled, as the manifest spells them."""
    words = (
        f"--num-layers {args.num_layers} --hidden-size {args.hidden_size} "
        f"--num-attention-heads {args.num_attention_heads} "
        f"--max-position-embeddings {args.max_position_embeddings}"
    )
    if args.max_position_embeddings_finetune is not None:
        words += f" --max-position-embeddings-finetune {args.max_position_embeddings_finetune}"
    return words


def tokenizer_line(image_size: int) -> str:
    """The ``common:`` line naming the bundle's tokenizers (paths relative to the bundle) and image size."""
    return (
        f"common: --img-tokenizer-path {TOKENIZERS[1]} --text-tokenizer-path {TOKENIZERS[0]} "
        f"--image-size {image_size}\n"
    )


def main_manifest_text(args: argparse.Namespace) -> str:
    """The main model's part of ``models.args``: its architecture and the tokenizers, then its roles
    (text2image with the ``--sampling`` defaults)."""
    folder = MODEL_FOLDERS[MAIN]
    sampling = f" {args.sampling}" if args.sampling else ""
    return (
        "# The bundled demo GPT (scripts/train_demo.sh): one model for text2image and captions.\n"
        f"common: {architecture(args)}\n"
        f"{tokenizer_line(args.image_size)}"
        f"text2image: --load {folder} --post-select-load {folder}{sampling}\n"
        f"caption: --load {folder}\n"
    )


def sr_manifest_text(args: argparse.Namespace) -> str:
    """The super-resolution model's part of ``models.args``: one role line with its whole architecture."""
    return f"{SR_HEADER}\n{SR_ROLE} {architecture(args)} --load {MODEL_FOLDERS[SUPER_RESOLUTION]}\n"


def split_manifest(path: Path) -> tuple[str, str]:
    """(main model lines, super-resolution model lines) of the manifest at ``path``; "" where none."""
    if not path.exists():
        return "", ""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read: {error}") from None
    is_sr = [line.rstrip("\n") == SR_HEADER or line.startswith(SR_ROLE) for line in lines]
    main = "".join(line for line, sr in zip(lines, is_sr, strict=True) if not sr)
    return main, "".join(line for line, sr in zip(lines, is_sr, strict=True) if sr)


def manifest_text(args: argparse.Namespace, existing: Path) -> str:
    """The new ``models.args``: this model's part, and the other model's part of ``existing`` kept.

    With only a super-resolution model the main part is just the tokenizers' ``common:`` line, which
    bundling the main model later rewrites with the rest of its part.
    """
    main, sr = split_manifest(existing)
    if args.model == MAIN:
        return main_manifest_text(args) + sr
    return (main or tokenizer_line(args.image_size)) + sr_manifest_text(args)


def bundle(args: argparse.Namespace) -> Path:
    """Write the model folder and the manifest; returns the model folder."""
    missing = [name for name in TOKENIZERS if not (args.bundle / name).is_file()]
    if missing:
        raise InputError(f"{args.bundle} lacks the tokenizer {missing[0]}; bundle the tokenizers first.")
    tokenizer = UnifiedTokenizer(
        args.bundle / TOKENIZERS[1], "cpu", txt_tokenizer_path=args.bundle / TOKENIZERS[0]
    )
    manifest = manifest_text(args, args.bundle / MANIFEST)  # an unreadable manifest stops before any write
    folder = MODEL_FOLDERS[args.model]
    target = args.bundle / folder
    staging = args.bundle / f".{folder}.new-{os.getpid()}"
    reshard_checkpoint(args.run, staging, 1, num_tokens=tokenizer.num_tokens)
    if target.exists():
        shutil.rmtree(target)
    rename_into_place(staging, target)
    atomic_write_text(args.bundle / MANIFEST, manifest)
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
