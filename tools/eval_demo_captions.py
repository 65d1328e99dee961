"""Measure the demo's caption model on test composites: its captions, and post-selection among 4 images.

    python tools/eval_demo_captions.py --captions data/demo/test/captions.tsv --limit 100

* image2text: each composite is captioned by the image2text task (`--batch-size` captions, sampled as
  `generate_samples.py --generation-task image2text` does for image n of a file listing the composites
  in order, with the same `--seed`); a caption is right when it parses back to the composite's animal
  and both colours (`demo.captions.parse_caption`). Prints the parse rate and each check's accuracy.
* post-selection: each composite and three wrong ones of the same file (one differing in the animal, one
  in the foreground, one in the background colour; drawn by `--seed`, see `demo.selection_check`) are
  scored by the post-selection task against each of the composite's true captions; right when the
  matching image scores best. Prints the accuracy, and how often it beats each kind of wrong image.

The model is the bundled demo manifest's caption role (`pretrained/demo/models.args`, as the scripts find
it) unless `--model-args` names another, in `generate_samples.py`'s arguments; sampling defaults to
`--temperature 1 --top_k 30`, which `--model-args` may override. `--limit N` takes N composites evenly
spread over the file (it is ordered by animal). `--report` writes one tab-separated line per caption
checked. The logic lives in `demo/`.
"""

import argparse
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arguments import get_args
from common.atomic_files import atomic_write_text
from common.errors import InputError
from common.model_sources import MANIFEST, ManifestError, read_manifest
from common.paths import PRETRAINED
from demo.caption_check import caption_summary, check_captions
from demo.composite_set import load_composites, spread
from demo.selection_check import check_selection, selection_summary
from generation.runtime import build_model, build_tokenizer, check_weights, init_device, set_random_seed
from generation.tasks import TaskContext
from generation.tasks.image2text import generate_captions
from generation.tasks.post_selection import score_candidates
from generation.tasks.runner import query_generator

MEASUREMENTS = ("image2text", "post-selection")
SAMPLING_DEFAULTS = ("--temperature", "1", "--top_k", "30")
CAPTION_ROLE = "caption"
REPORT_HEADER = "measurement\timage\texpected\tresult\tverdict"


def bundled_caption_arguments() -> list[str]:
    """The caption role's arguments in the bundled manifest (paths made absolute)."""
    manifest = PRETRAINED / MANIFEST
    if not manifest.is_file():
        raise ManifestError(f"no bundled demo models: {manifest} does not exist (pass --model-args).")
    entries = read_manifest(manifest)
    if CAPTION_ROLE not in entries:
        raise ManifestError(f"{manifest} has no '{CAPTION_ROLE}:' entry (pass --model-args).")
    return entries[CAPTION_ROLE]


def load_context(model_args: list[str], batch_size: int, seed: int) -> TaskContext:
    """The caption model and tokenizer that `generate_samples.py` would load with these arguments."""
    args = get_args([*SAMPLING_DEFAULTS, *model_args, "--batch-size", str(batch_size), "--seed", str(seed)])
    check_weights(args)
    device = init_device(args)
    set_random_seed(args.seed, device)
    tokenizer = build_tokenizer(args, device)
    model = build_model(args, tokenizer.num_tokens, device)
    return TaskContext(model, tokenizer, args, image_size=args.image_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--captions",
        type=Path,
        default=Path("data/demo/test/captions.tsv"),
        help="the test split's captions file, image<TAB>caption (default: %(default)s)",
    )
    parser.add_argument(
        "--model-args", help="generate_samples.py arguments of the model (default: the bundled caption role)"
    )
    parser.add_argument("--measure", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument("--limit", type=int, help="measure N composites, evenly spread over the file")
    parser.add_argument("--seed", type=int, default=0, help="sampling and wrong-candidate seed (≥ 0)")
    parser.add_argument("--batch-size", type=int, default=1, help="captions per image (image2text)")
    parser.add_argument("--report", type=Path, help="write one tab-separated line per caption checked here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, got {args.seed}.")
    try:
        composites = load_composites(args.captions)
        targets = spread(len(composites), args.limit)
        model_args = shlex.split(args.model_args) if args.model_args else bundled_caption_arguments()
        ctx = load_context(model_args, args.batch_size, args.seed)
        device = ctx.model.word_embeddings.weight.device

        def captioner(number: int, path: str) -> list[str]:
            ctx.generator = query_generator(args.seed, number, device)  # as the query loop seeds line n
            return generate_captions(ctx, path)

        def scorer(text: str, paths: list[str]) -> list[float]:
            return score_candidates(ctx, text, paths).tolist()

        lines, summaries = [], []
        if "image2text" in args.measure:
            chosen = [composites[index] for index in targets]
            verdicts = check_captions(chosen, [index + 1 for index in targets], captioner)
            lines += [verdict.report_line() for verdict in verdicts]
            summaries.append(caption_summary(verdicts, len(targets)))
        if "post-selection" in args.measure:
            selections = check_selection(composites, targets, scorer, args.seed)
            lines += [verdict.report_line() for verdict in selections]
            summaries.append(selection_summary(selections, len(targets)))
    except InputError as error:
        print(f"eval_demo_captions: error: {error}", file=sys.stderr)
        return 2
    if args.report is not None:
        atomic_write_text(args.report, "\n".join([REPORT_HEADER, *lines]) + "\n")
    print("\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
