"""Measure demo super-resolution: magnified test composites against the true ones, and a bilinear baseline.

    python tools/eval_demo_sr.py queries --captions data/demo/test/captions.tsv --every 20 \\
        --output sr_queries.tsv
    .venv/bin/python generate_samples.py --num-layers 4 --hidden-size 128 --num-attention-heads 4 \\
        --max-position-embeddings 264 --max-position-embeddings-finetune 344 --image-size 32 \\
        --img-tokenizer-path pretrained/demo/vqvae_demo.pt \\
        --text-tokenizer-path pretrained/demo/demo_text.model --load pretrained/demo/cogview-demo-sr \\
        --device cpu --temperature 1.02 --top_k 200 --top_p 0 --generation-task super-resolution \\
        --with-id --input-source sr_queries.tsv --output-path samples_sr_eval
    python tools/eval_demo_sr.py score --queries sr_queries.tsv --samples samples_sr_eval

``queries`` writes ``id<TAB>caption<TAB>image`` lines (the ``--with-id`` input of the super-resolution task)
for every ``--every``-th image of a captions file, its captions alternating between the image's languages.
The task reads each 64 px composite at the model's image size (32 px) and magnifies it to 64 px. ``score``
reads each result (``SAMPLES/{id}/0.jpg``) and scores it as ``tools/eval_demo.py`` does (background,
foreground, animal) with its PSNR against the true composite; the baseline is the 32 px input the task
read, upscaled 2× bilinearly and saved as JPEG the way the task saves its results.
"""

import argparse
import io
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch.nn.functional as F
from PIL import Image

import vqvae
from common.atomic_files import atomic_write_text
from common.errors import InputError
from common.paths import DEMO_CLASSIFIER_PATH
from demo.classifier import load_classifier
from demo.image_sets import ImageSetError, load_records
from demo.scoring import score_images, summarize, summary_text
from preprocess.sources import read_captions

RESULT_NAME = "0.jpg"  # the one sample of a super-resolution query


def write_queries(captions: Path, every: int, output: Path) -> int:
    """Write the queries of every ``every``-th image of ``captions``; returns how many."""
    by_image: dict[str, list[str]] = {}
    for record in load_records(captions):
        by_image.setdefault(record.image, []).append(record.caption)
    chosen = list(by_image.items())[::every]
    lines = []
    for number, (image, texts) in enumerate(chosen):
        path = (captions.parent / image).resolve()
        lines.append(f"{path.stem}\t{texts[number % len(texts)]}\t{path}")
    atomic_write_text(output, "\n".join(lines) + "\n")
    return len(lines)


def psnr(images: list[np.ndarray], references: list[np.ndarray]) -> float:
    """PSNR in dB over all pixels of uint8 images against their references (same shapes)."""
    error = np.mean(
        [np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(images, references, strict=True)]
    )
    return 10.0 * math.log10(255.0**2 / max(float(error), 1e-10))


def bilinear_baseline(reference: Image.Image, low_size: int) -> np.ndarray:
    """The ``low_size`` px input the task reads, upscaled 2× bilinearly, through a JPEG like the results."""
    low = vqvae.denormalize(vqvae.image_to_tensor(reference, low_size))  # [1, 3, s, s]
    high = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    buffer = io.BytesIO()
    vqvae.save_picture(vqvae.to_pil(high), buffer, "JPEG")
    return np.asarray(Image.open(buffer).convert("RGB"))


def read_rgb(path: Path, origin: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as error:
        raise ImageSetError(f"{origin}: cannot read {path} ({error}).") from None


def score(queries: Path, samples: Path, classifier_path: Path, low_size: int) -> list[str]:
    """The summary lines: the results, then the bilinear baseline, each with its PSNR."""
    classifier = load_classifier(classifier_path)
    names, prompts, results, baselines, references = [], [], [], [], []
    for record in read_captions(queries):  # id<TAB>caption<TAB>image: "image" is the id here
        caption, _, image = record.caption.partition("\t")
        reference = read_rgb(Path(image), record.origin)
        result = read_rgb(samples / record.image / RESULT_NAME, record.origin)
        if result.shape != reference.shape:
            raise ImageSetError(
                f"{record.origin}: {samples / record.image / RESULT_NAME} is {result.shape[1]} px, "
                f"the composite {reference.shape[1]} px."
            )
        names.append(record.image)
        prompts.append(caption)
        references.append(reference)
        results.append(result)
        baselines.append(bilinear_baseline(Image.fromarray(reference), low_size))
    lines = []
    for label, images in (
        ("super-resolution", results),
        (f"bilinear 2× of the {low_size} px input", baselines),
    ):
        summary = summary_text(summarize(score_images(images, names, prompts, classifier)))
        lines.append(f"{label}: {summary}, PSNR {psnr(images, references):.2f} dB")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    queries = commands.add_parser("queries", help="write the super-resolution queries")
    queries.add_argument("--captions", type=Path, required=True, help="TSV/JSONL of image<TAB>caption")
    queries.add_argument("--every", type=int, default=20, help="take every Nth image (default 20)")
    queries.add_argument("--output", type=Path, required=True, help="queries file to write")
    scoring = commands.add_parser("score", help="score the results and the bilinear baseline")
    scoring.add_argument("--queries", type=Path, required=True, help="the queries file")
    scoring.add_argument("--samples", type=Path, required=True, help="output folder of the --with-id run")
    scoring.add_argument("--classifier", type=Path, default=DEMO_CLASSIFIER_PATH, help="animal classifier")
    scoring.add_argument("--image-size", type=int, default=32, help="image side the model reads (px)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "queries" and args.every < 1:
        parser.error("--every must be at least 1")
    try:
        if args.command == "queries":
            count = write_queries(args.captions, args.every, args.output)
            print(f"wrote {count} queries to {args.output}")
        else:
            print("\n".join(score(args.queries, args.samples, args.classifier, args.image_size)))
    except InputError as error:
        print(f"eval_demo_sr: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
