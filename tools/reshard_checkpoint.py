"""Merge or split the model-parallel shards of a CogView checkpoint.

    python tools/reshard_checkpoint.py pretrained/cogview/cogview-base pretrained/cogview/cogview-base-mp2 \\
        --target-mp 2

reads every ``mp_rank_XX_model_states.pt`` of the iteration that SRC's tracker names, merges them,
re-pads the vocabulary for the target size and writes DST in the same layout (tracker last).
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import STORAGE_DTYPES, CheckpointError, CheckpointNotFoundError, reshard_checkpoint
from model.partition import COGVIEW_NUM_TOKENS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: SRC DST --target-mp N [--num-tokens T] [--dtype D] [--trust-checkpoint]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="checkpoint directory with a tracker file")
    parser.add_argument(
        "dst", type=Path, help="new checkpoint directory (created; written whole or not at all)"
    )
    parser.add_argument("--target-mp", type=int, required=True, help="model-parallel size to write")
    parser.add_argument(
        "--num-tokens",
        type=int,
        default=COGVIEW_NUM_TOKENS,
        help=f"real vocabulary size; embedding rows from here on are padding (default {COGVIEW_NUM_TOKENS})",
    )
    parser.add_argument(
        "--dtype",
        choices=tuple(STORAGE_DTYPES),
        help="store the weights in this precision (fp16: as the released checkpoints; default: as they are)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow arbitrary pickled objects in the files (unsafe; only for files from a trusted source)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Reshard SRC into DST; returns the exit status (1 with a one-line message on a bad checkpoint)."""
    args = parse_args(argv)
    try:
        reshard_checkpoint(
            args.src,
            args.dst,
            args.target_mp,
            num_tokens=args.num_tokens,
            dtype=STORAGE_DTYPES[args.dtype] if args.dtype else None,
            trust_checkpoint=args.trust_checkpoint,
        )
    except (CheckpointError, CheckpointNotFoundError, OSError) as error:
        print(f"reshard_checkpoint: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"reshard_checkpoint: interrupted; {args.dst} was not written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
