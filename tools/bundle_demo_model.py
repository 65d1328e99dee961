"""Bundle a trained demo GPT: its weights, in the released checkpoint layout, and the manifest that names it.

    python tools/bundle_demo_model.py data/demo/gpt/demo_gpt12-01-09-45 --bundle pretrained/demo \\
        --num-layers 6 --hidden-size 192 --num-attention-heads 6 --max-position-embeddings 280 --image-size 32
    python tools/bundle_demo_model.py data/demo/caption/gpt/demo_gpt12-01-09-45 \\
        --bundle pretrained/demo --model caption --num-layers 6 --hidden-size 192 --num-attention-heads 6 \\
        --max-position-embeddings 280 --image-size 32
    python tools/bundle_demo_model.py data/demo/sr/demo_sr12-01-11-13 --bundle pretrained/demo \\
        --model super-resolution --num-layers 4 --hidden-size 128 --num-attention-heads 4 \\
        --max-position-embeddings 264 --max-position-embeddings-finetune 344 --image-size 32

The main model (``--model main``, the default) goes to ``{bundle}/cogview-demo/``, named in the manifest
``{bundle}/models.args`` for text2image, its post-selection scorer and the caption roles. The caption model
(``--model caption``, the main model finetuned on captions) goes to ``{bundle}/cogview-demo-caption/``, takes
over the caption role (image2text, post-selection) and joins the main model as text2image's second
``--post-select-load`` scorer; it must have the main model's architecture (it is named on the main model's
``common:`` arguments), so the main model is bundled first. The super-resolution
model (``--model super-resolution``) goes to ``{bundle}/cogview-demo-sr/``, named for the super-resolution
role with its own architecture (its line's arguments override ``common:``). Each folder holds a tracker and
``{iteration}/mp_rank_00_model_states.pt``: the weights of the newest checkpoint of the training run,
model-parallel size 1, stored in fp16 by default (as the released weights are; the loaders cast them to the
model's precision, and the three models fit the bundle's 20 MB), without optimizer or RNG state, so
``generate_samples.py --load`` reads it. The manifest has one part per model, each under its own header line,
always in the order main, caption, super-resolution; bundling one model keeps the others' parts, so the
order of bundling does not change the manifest. The tokenizers ``demo_text.model`` and ``vqvae_demo.pt`` must
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
from model.checkpoint import STORAGE_DTYPES, reshard_checkpoint

MAIN, CAPTION, SUPER_RESOLUTION = "main", "caption", "super-resolution"
MODEL_FOLDERS = {MAIN: "cogview-demo", CAPTION: "cogview-demo-caption", SUPER_RESOLUTION: "cogview-demo-sr"}
MANIFEST = "models.args"
TOKENIZERS = ("demo_text.model", "vqvae_demo.pt")
# Each model's part of the manifest starts with its header (lines before any header belong to the main part).
HEADERS = {
    MAIN: "# The bundled demo GPT (scripts/train_demo.sh): text2image, and captions unless a caption GPT "
    "follows.",
    CAPTION: "# The bundled caption GPT (scripts/train_demo.sh): the demo GPT finetuned on captions, for "
    "image2text and post-selection.",
    SUPER_RESOLUTION: "# The bundled super-resolution GPT (scripts/train_demo.sh), with its own "
    "architecture.",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: the training run, the bundle folder, which model and its architecture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="pretrain_gpt2.py save folder (with its tracker file)")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (holds the tokenizers)")
    parser.add_argument(
        "--model",
        choices=tuple(MODEL_FOLDERS),
        default=MAIN,
        help="main: text2image and captions (default); caption: the main model finetuned on captions "
        "(image2text and the post-selection task); super-resolution: the magnify model",
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
        help="the model's sampling defaults for its own roles: the main model's text2image line, e.g. "
        '"--top_k 30 --guidance-scale 3", or the caption model\'s caption line, e.g. "--temperature 0.5" '
        "(the launchers' released-model settings do not suit a small demo model; a user's own arguments "
        "still come last)",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(STORAGE_DTYPES),
        default="fp16",
        help="precision the weights are stored in (default fp16, as the released weights)",
    )
    args = parser.parse_args(argv)
    if (args.model == SUPER_RESOLUTION) != (args.max_position_embeddings_finetune is not None):
        parser.error("--max-position-embeddings-finetune goes with --model super-resolution, and only there.")
    if args.sampling and args.model == SUPER_RESOLUTION:
        parser.error(
            "--sampling sets text2image's or the captions' defaults; it goes with --model main or caption."
        )
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
        f"{HEADERS[MAIN]}\n"
        f"common: {architecture(args)}\n"
        f"{tokenizer_line(args.image_size)}"
        f"text2image: --load {folder} --post-select-load {folder}{sampling}\n"
        f"caption: --load {folder}\n"
    )


def caption_manifest_text(args: argparse.Namespace) -> str:
    """The caption model's part of ``models.args``: the caption role (with the ``--sampling`` defaults),
    which follows the main part's caption line (the last ``--load`` is the one read), and text2image's
    post-selection scorers, which replace the main part's (the last ``--post-select-load`` is read).

    text2image scores its candidates with both GPTs, summed: on the demo's generated candidates that picked
    a right one more often than either alone (README).
    """
    sampling = f" {args.sampling}" if args.sampling else ""
    scorers = f"{MODEL_FOLDERS[MAIN]} {MODEL_FOLDERS[CAPTION]}"
    return (
        f"{HEADERS[CAPTION]}\n"
        f"caption: --load {MODEL_FOLDERS[CAPTION]}{sampling}\n"
        f"text2image: --post-select-load {scorers}\n"
    )


def sr_manifest_text(args: argparse.Namespace) -> str:
    """The super-resolution model's part of ``models.args``: one role line with its whole architecture."""
    line = f"super-resolution: {architecture(args)} --load {MODEL_FOLDERS[SUPER_RESOLUTION]}"
    return f"{HEADERS[SUPER_RESOLUTION]}\n{line}\n"


def split_manifest(path: Path) -> dict[str, str]:
    """Each model's part (its lines) of the manifest at ``path``; "" for a model without one."""
    parts = dict.fromkeys(HEADERS, "")
    if not path.exists():
        return parts
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read: {error}") from None
    model = MAIN
    for line in lines:
        model = next((name for name, header in HEADERS.items() if line.rstrip("\n") == header), model)
        parts[model] += line
    return parts


def manifest_text(args: argparse.Namespace, existing: Path) -> str:
    """The new ``models.args``: this model's part, and the other models' parts of ``existing`` kept.

    With no main model the main part is just the tokenizers' ``common:`` line, which bundling the main
    model later rewrites with the rest of its part. A caption model needs the main model's part, with the
    same architecture, already there.
    """
    parts = split_manifest(existing)
    if args.model == MAIN:
        parts[MAIN] = main_manifest_text(args)
    elif args.model == CAPTION:
        if f"common: {architecture(args)}\n" not in parts[MAIN]:
            raise InputError(
                f"{existing} has no main model of the architecture {architecture(args)!r}; the caption "
                "model is named on the main model's arguments (architecture and tokenizers), so bundle a "
                "main model of its architecture first"
            )
        parts[CAPTION] = caption_manifest_text(args)
    else:
        parts[MAIN] = parts[MAIN] or tokenizer_line(args.image_size)
        parts[SUPER_RESOLUTION] = sr_manifest_text(args)
    return "".join(parts.values())


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
    reshard_checkpoint(
        args.run, staging, 1, num_tokens=tokenizer.num_tokens, dtype=STORAGE_DTYPES[args.dtype]
    )
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
