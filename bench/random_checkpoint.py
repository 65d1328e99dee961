"""Write a random CogView checkpoint in the released layout, for benchmarks at the real size.

``{folder}/latest_checkpointed_iteration.txt`` holds ``142000``, and
``{folder}/142000/mp_rank_00_model_states.pt`` ``{"module": state_dict, "iteration": 142000}`` in fp16, with
the released key names and shapes (taken from ``GPT2Model`` on the meta device, so they cannot drift from
the model). At the 4B size that is 7.9 GB.

The tensors are backed by scratch files while they are written, so this process never holds the weights in
anonymous memory (the machine may be shared); the values are a random block repeated, N(0, 0.02) for
matrices and embeddings, LayerNorms at weight 1 and bias 0, all biases 0.

Run: ``.venv/bin/python bench/random_checkpoint.py FOLDER [--layers 48 --hidden 2560 --heads 40]``.
"""

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import GPT2Model
from model.checkpoint import shard_filename, write_tracker
from model.partition import COGVIEW_NUM_TOKENS, padded_vocab_size

RELEASED_ITERATION = 142000
_BLOCK = 1 << 24  # values in the repeated random block


@dataclass(frozen=True)
class ModelSize:
    """The size arguments of a CogView model (defaults: the released 4B model)."""

    layers: int = 48
    hidden: int = 2560
    heads: int = 40
    positions: int = 1089
    vocab: int = padded_vocab_size(COGVIEW_NUM_TOKENS, 1)

    def meta_model(self) -> GPT2Model:
        """``GPT2Model`` of this size on the meta device (no memory)."""
        with torch.device("meta"):
            return GPT2Model(
                self.layers, self.vocab, self.hidden, self.heads, 0.0, 0.0, 0.0, self.positions, 0, False
            )

    def generation_arguments(self) -> list[str]:
        """The command-line size arguments that build this model."""
        return [
            "--num-layers", str(self.layers), "--hidden-size", str(self.hidden),
            "--num-attention-heads", str(self.heads), "--max-position-embeddings", str(self.positions),
        ]  # fmt: skip


def _fill(tensor: torch.Tensor, key: str, block: torch.Tensor, offset: int) -> None:
    """Released-like values: LayerNorm weights 1, biases 0, everything else from the random block."""
    if key.endswith("bias"):
        tensor.zero_()
    elif "layernorm" in key:
        tensor.fill_(1.0)
    else:
        flat = tensor.view(-1)
        for start in range(0, flat.numel(), _BLOCK):
            piece = flat[start : start + _BLOCK]
            shift = (offset + start) % (_BLOCK - piece.numel() + 1)
            piece.copy_(block[shift : shift + piece.numel()])


def write_random_checkpoint(folder: Path, size: ModelSize = ModelSize(), seed: int = 0) -> Path:
    """Write the checkpoint into ``folder`` (created); returns the model-states file."""
    shapes = {key: tensor.shape for key, tensor in size.meta_model().state_dict().items()}
    block = torch.randn(_BLOCK, generator=torch.Generator().manual_seed(seed)).mul_(0.02).half()
    iteration_folder = folder / str(RELEASED_ITERATION)
    iteration_folder.mkdir(parents=True, exist_ok=True)
    path = iteration_folder / shard_filename(0)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".scratch-") as scratch:
        state, offset = {}, 0
        for index, (key, shape) in enumerate(tqdm(shapes.items(), desc="random weights", unit="tensor")):
            numel = shape.numel()
            tensor = torch.from_file(f"{scratch}/{index}", shared=True, size=numel, dtype=torch.float16)
            state[key] = tensor.view(shape)
            _fill(state[key], key, block, offset)
            offset += numel
        print(f"writing {path}", file=sys.stderr)
        torch.save({"module": state, "iteration": RELEASED_ITERATION}, path)
        del state
    write_tracker(folder, RELEASED_ITERATION)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="where to write (created)")
    parser.add_argument("--layers", type=int, default=ModelSize.layers)
    parser.add_argument("--hidden", type=int, default=ModelSize.hidden)
    parser.add_argument("--heads", type=int, default=ModelSize.heads)
    args = parser.parse_args(argv)
    path = write_random_checkpoint(args.folder, ModelSize(args.layers, args.hidden, args.heads))
    print(f"{path}: {path.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
