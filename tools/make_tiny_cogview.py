"""Write a tiny random CogView (a 2-layer GPT and a ×32 VQ-VAE) to try the whole pipeline in seconds.

    python tools/make_tiny_cogview.py pretrained/tiny
    echo 一只猫 > input.txt
    python generate_samples.py --input-source input.txt --device cpu $(cat pretrained/tiny/args.txt)

The weights are random, so the images are noise and the captions gibberish, but every task, file and
error path runs as with the released models: the checkpoint has the released layout, the vocabulary is
the released text tokenizer's, and a 256² image becomes 8×8 = 64 codes (size token ``[TINY]``). The test
suite's end-to-end fixtures are made here too. ``args.txt`` holds the arguments that describe the model.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import vqvae
from common.atomic_files import rename_into_place
from common.errors import InputError
from data_utils.sp_tokenizer import SentencePieceTokenizer
from data_utils.unified_tokenizer import COMMAND_TOKENS
from model import GPT2Model
from model.checkpoint import save_checkpoint
from model.partition import padded_vocab_size

TINY_SIZES = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "max_position_embeddings": 96}
TINY_IMAGE_CODES = 64  # codebook size of the tiny VQ-VAE
ITERATION = 142000  # the released base model's iteration folder
FINETUNE_POSITIONS = 128  # room for the super-resolution windows


def spread_codebook(model: vqvae.VQVAE, images: torch.Tensor) -> None:
    """Set a random VQ-VAE's codebook to random encoder outputs of ``images``, so the codes vary."""
    with torch.no_grad():
        latents = model.enc_b(images).reshape(-1, model.quantize_t.embed.shape[0])  # [n, dim]
        codebook = latents[torch.randperm(latents.shape[0])[: model.n_embed]].t()  # [dim, n_embed]
        model.quantize_t.embed.copy_(codebook)
        model.quantize_t.embed_avg.copy_(codebook)


def tiny_vqvae() -> vqvae.VQVAE:
    """A ×32 VQ-VAE with 64 codes whose images differ visibly from code to code.

    The codebook is spread over encoder outputs (different images get different codes) and the decoder is
    re-initialised with large weights (different codes decode to visibly different images).
    """
    model = vqvae.VQVAE(channel=8, embed_dim=8, n_embed=TINY_IMAGE_CODES, stride=10).eval()
    spread_codebook(model, torch.randn(2, 3, 256, 256) * 1.5)
    with torch.no_grad():
        convs = [
            layer
            for layer in model.dec.blocks
            if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
        ]
        for std, conv in zip([2.0] + [0.5] * (len(convs) - 1), convs, strict=True):
            torch.nn.init.normal_(conv.weight, std=std)
            torch.nn.init.zeros_(conv.bias)
    return model


def tiny_gpt(num_tokens: int) -> GPT2Model:
    """A random GPT2Model of ``TINY_SIZES`` for ``num_tokens`` ids (MP=1 padding, no dropout)."""
    return GPT2Model(
        num_layers=TINY_SIZES["num_layers"],
        vocab_size=padded_vocab_size(num_tokens, 1),
        hidden_size=TINY_SIZES["hidden_size"],
        num_attention_heads=TINY_SIZES["num_attention_heads"],
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=TINY_SIZES["max_position_embeddings"],
        max_memory_length=0,
        checkpoint_activations=False,
    )


def command_line(sizes: dict[str, int] = TINY_SIZES) -> list[str]:
    """The size arguments of ``generate_samples.py`` that describe the tiny model."""
    args = [f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()]
    return [*args, f"--max-position-embeddings-finetune={FINETUNE_POSITIONS}"]


def make_tiny_cogview(folder: str | Path, seed: int = 0) -> dict:
    """Write ``{folder}/vqvae.pt``, ``{folder}/checkpoint/`` (released layout) and ``{folder}/args.txt``.

    ``folder`` must be new or empty; it is written under a temporary name and renamed at the end, so a
    failure leaves nothing behind. Returns ``{"checkpoint": dir, "vqvae": file, "args": size arguments}``;
    the arguments to pass are ``--load {checkpoint} --img-tokenizer-path {vqvae}`` followed by ``args``.
    """
    folder = Path(folder)
    if folder.is_file() or (folder.is_dir() and any(folder.iterdir())):
        raise InputError(f"{folder} already exists and is not empty; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    try:
        args = _write_tiny_cogview(staging, folder, seed)
        rename_into_place(staging, folder)  # folder is absent or an empty directory, which rename replaces
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"checkpoint": folder / "checkpoint", "vqvae": folder / "vqvae.pt", "args": args}


def _write_tiny_cogview(staging: Path, folder: Path, seed: int) -> list[str]:
    """Write the files into ``staging``, naming their final place ``folder`` in ``args.txt``."""
    staging.mkdir()
    torch.manual_seed(seed)
    vqvae.save_vqvae(tiny_vqvae(), staging / "vqvae.pt")
    num_tokens = TINY_IMAGE_CODES + SentencePieceTokenizer().num_tokens + len(COMMAND_TOKENS)
    model = tiny_gpt(num_tokens)
    save_checkpoint(model, staging / "checkpoint", ITERATION)
    args = command_line()
    load = ["--load", str(folder / "checkpoint"), "--img-tokenizer-path", str(folder / "vqvae.pt")]
    (staging / "args.txt").write_text(" ".join(load + args) + "\n", encoding="utf-8")
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the tiny model into the folder the command line names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write it (created)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        made = make_tiny_cogview(args.folder, args.seed)
    except (InputError, OSError) as error:
        print(f"make_tiny_cogview: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {made['checkpoint']} and {made['vqvae']}; arguments in {args.folder / 'args.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
