"""Train a VQ-VAE image tokenizer on a folder (recursive) or zip of images; saves the released format.

Example (a tiny tokenizer: 64 px images → 16×16 codes from a codebook of 512):
    python tools/train_vqvae.py --images data/images.zip --output pretrained/vqvae/tiny.pt \\
        --image-size 64 --channel 64 --embed-dim 32 --n-embed 512 --stride 4 --steps 5000
Continue that run later with the same command plus --resume (and a larger --steps).
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import InputError
from vqvae.training import RELEASED_SHAPE, TrainConfig, train


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line → TrainConfig (defaults: the released architecture, 256² px, ×8 down-sampling)."""
    defaults = TrainConfig(images=Path(), output=Path())
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, required=True, help="folder (searched recursively) or .zip")
    parser.add_argument("--output", type=Path, required=True, help="model file; resume state goes beside it")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    shape = parser.add_argument_group(
        "model shape",
        "default: the released architecture, or with --resume the saved run's (which must match)",
    )
    shape.add_argument("--channel", type=int, help=f"default {RELEASED_SHAPE['channel']}")
    shape.add_argument("--embed-dim", type=int, help=f"default {RELEASED_SHAPE['embed_dim']}")
    shape.add_argument("--n-embed", type=int, help=f"codebook size; default {RELEASED_SHAPE['n_embed']}")
    shape.add_argument(
        "--stride", type=int, help=f"6: x8 down-sampling, 4: x4; default {RELEASED_SHAPE['stride']}"
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument(
        "--steps", type=int, default=defaults.steps, help="total steps, counting resumed ones"
    )
    parser.add_argument("--commitment-beta", type=float, default=defaults.commitment_beta)
    parser.add_argument(
        "--dead-code-threshold",
        type=float,
        default=defaults.dead_code_threshold,
        help="restart codes whose EMA count of assignments per step falls below this",
    )
    parser.add_argument("--save-interval", type=int, default=defaults.save_interval)
    parser.add_argument("--resume", action="store_true", help="continue the run saved at --output")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=2, help="image-loading worker processes")
    args = parser.parse_args(argv)
    return TrainConfig(**vars(args))


def main(argv: list[str] | None = None) -> None:
    """Train as the command line says; errors and Ctrl-C end with one line (exit status 1, 130)."""
    config = parse_args(argv)
    try:
        result = train(config)
    except (InputError, OSError) as error:  # bad options or files, or e.g. a full disk while saving
        sys.exit(f"train_vqvae: error: {error}")
    except KeyboardInterrupt:
        print("train_vqvae: interrupted; steps since the last save are lost", file=sys.stderr)
        raise SystemExit(130) from None
    if result.interrupted:
        print(
            f"train_vqvae: interrupted at step {result.step}; saved {config.output} "
            "(continue with the same command and --resume)",
            file=sys.stderr,
        )
        raise SystemExit(130)
    if result.psnr:
        print(
            f"saved {config.output} at step {result.step}: PSNR {result.psnr[-1]:.2f} dB, "
            f"codebook usage {result.usage[-1]:.1%}"
        )


if __name__ == "__main__":
    main()
