"""Train the demo scorer's animal classifier on the train split and report its accuracy on the test split.

    python tools/train_demo_classifier.py --train data/demo/train/captions.tsv \\
        --test data/demo/test/captions.tsv --output pretrained/demo/animal_classifier.pt

The classifier sees only the silhouette mask the scorer extracts (see `demo/evaluation.py`); the logic
lives in `demo/classifier.py`. Use it through `tools/eval_demo.py`.
"""

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import InputError
from demo.classifier import ClassifierTraining, labelled_masks, predict, save_classifier, train_classifier
from demo.image_sets import load_records, read_pixels


def masks_of(captions: Path) -> tuple:
    """Masks and labels of the images a captions file lists (paths relative to its folder)."""
    records = load_records(captions)
    return labelled_masks(records, read_pixels(records, captions.parent))


def main(argv: list[str] | None = None) -> int:
    defaults = ClassifierTraining()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=Path, required=True, help="captions file of the train split")
    parser.add_argument("--test", type=Path, required=True, help="captions file of the test split")
    parser.add_argument("--output", type=Path, required=True, help="classifier file to write")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    try:
        train_masks, train_labels = masks_of(args.train)
        test_masks, test_labels = masks_of(args.test)
    except InputError as error:
        print(f"train_demo_classifier: error: {error}", file=sys.stderr)
        return 2
    start = time.monotonic()
    config = ClassifierTraining(epochs=args.epochs, seed=args.seed)
    model = train_classifier(train_masks, train_labels, config)
    seconds = time.monotonic() - start
    train_accuracy = (predict(model, train_masks) == train_labels).mean()
    test_accuracy = (predict(model, test_masks) == test_labels).mean()
    save_classifier(model, args.output)
    print(
        f"{args.output}: trained on {len(train_labels)} images in {seconds:.0f} s; accuracy "
        f"train {train_accuracy:.3f}, test {test_accuracy:.3f} ({len(test_labels)} images)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
