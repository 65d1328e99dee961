"""Score demo images against their prompts from the pixels alone: background, foreground colour, animal.

    # real test composites (the scorer's ceiling), then the same through an image tokenizer and back
    python tools/eval_demo.py --captions data/demo/test/captions.tsv
    python tools/eval_demo.py --captions data/demo/test/captions.tsv \\
        --round-trip pretrained/demo/vqvae_demo.pt
    # images from `generate_samples.py --with-id`: prompts file `id<TAB>prompt`, images in SAMPLES/id/*.jpg
    python tools/eval_demo.py --prompts prompts.tsv --samples samples_text2image

The background is read from the image's outer frame, the foreground colour from the rest, and the animal
by the bundled classifier from the silhouette's mask. Prints one summary line (accuracy of each check and of
all three); --report writes one line per image. The logic lives in `demo/`.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vqvae
from common.atomic_files import atomic_write_text
from common.errors import InputError
from common.paths import DEMO_CLASSIFIER_PATH
from demo.classifier import load_classifier
from demo.image_sets import ImageSetError, load_records, read_pixels
from demo.round_trip import RoundTrip
from demo.scoring import REPORT_HEADER, score_images, summarize, summary_text
from preprocess.sources import Record, read_captions

SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")
GRID_NAME = "concat"  # the per-query grid generate_samples.py writes beside the samples


def sample_records(prompts: Path, samples: Path) -> list[Record]:
    """One record per sample image of each `id<TAB>prompt` line: `samples/id/*.jpg` but the grid."""
    records = []
    for line in read_captions(prompts):
        folder = samples / line.image
        if not folder.is_dir():
            raise ImageSetError(f"{line.origin}: no sample folder {folder}.")
        images = sorted(
            path
            for path in folder.iterdir()
            if path.suffix.lower() in SAMPLE_SUFFIXES and path.stem != GRID_NAME
        )
        if not images:
            raise ImageSetError(f"{line.origin}: {folder} holds no sample images.")
        records += [Record(str(path.relative_to(samples)), line.caption, line.origin) for path in images]
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", type=Path, help="TSV/JSONL of image<TAB>prompt (paths relative to it)")
    source.add_argument("--prompts", type=Path, help="id<TAB>prompt file of a --with-id generation run")
    parser.add_argument("--samples", type=Path, help="output folder of that run (with --prompts)")
    parser.add_argument("--classifier", type=Path, default=DEMO_CLASSIFIER_PATH, help="animal classifier")
    parser.add_argument("--round-trip", type=Path, metavar="VQVAE", help="encode and decode each image first")
    parser.add_argument(
        "--image-size", type=int, default=32, help="image side the --round-trip tokenizer reads (px)"
    )
    parser.add_argument("--report", type=Path, help="write one tab-separated line per image here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.prompts is None) != (args.samples is None):
        parser.error("--prompts and --samples go together.")
    try:
        classifier = load_classifier(args.classifier)
        if args.captions is not None:
            records, root = load_records(args.captions), args.captions.parent
        else:
            records, root = sample_records(args.prompts, args.samples), args.samples
        trip = None
        if args.round_trip is not None:
            trip = RoundTrip(vqvae.load_vqvae(args.round_trip, device="cpu"), args.image_size)
        pixels = read_pixels(records, root, transform=trip)
    except InputError as error:
        print(f"eval_demo: error: {error}", file=sys.stderr)
        return 2
    results = score_images(
        [pixels[r.image] for r in records],
        [r.image for r in records],
        [r.caption for r in records],
        classifier,
    )
    if args.report is not None:
        lines = [REPORT_HEADER, *(result.report_line() for result in results)]
        atomic_write_text(args.report, "\n".join(lines) + "\n")
    if trip is not None:
        print(trip.summary_text())
    print(summary_text(summarize(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
