"""Loading and saving VQ-VAE weights in the released format (a flat fp32 state dict, keys prefixed `module.`).

The model configuration is not stored in the file; `load_vqvae` infers it from the tensor shapes, so the
released checkpoint and tiny models trained with `tools/train_vqvae.py` load the same way.
"""

import os
from pathlib import Path

import torch

from common.atomic_files import atomic_torch_save
from common.errors import InputError, MissingInputError
from model.checkpoint import refused_global
from vqvae.model import VQVAE

DDP_PREFIX = "module."


class VQVAECheckpointError(InputError):
    """A file that is not a loadable VQ-VAE checkpoint (corrupt, wrong content, or wrong keys/shapes)."""


def save_vqvae(model: VQVAE, path: str | os.PathLike) -> None:
    """Write `model` in the released format: flat fp32 CPU state dict, every key prefixed `module.`."""
    state = {DDP_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MissingInputError(f"VQ-VAE checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        refused = refused_global(error)
        if refused is not None:
            raise VQVAECheckpointError(
                f"VQ-VAE checkpoint {path} holds a pickled {refused}, which safe loading refuses: a VQ-VAE "
                "file holds only tensors, so this one is not one or was tampered with."
            ) from error
        raise VQVAECheckpointError(
            f"Cannot read VQ-VAE checkpoint {path}: truncated, corrupt or not a PyTorch weights file "
            f"({type(error).__name__})."
        ) from error
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VQVAECheckpointError(f"{path} is not a VQ-VAE checkpoint: it is no flat dict of tensors.")
    state = {str(k).removeprefix(DDP_PREFIX): v for k, v in obj.items()}
    if not any(k.startswith(("enc_b.", "quantize_t.", "dec.")) for k in state):
        raise VQVAECheckpointError(
            f"{path} is not a VQ-VAE checkpoint: it has no enc_b./quantize_t./dec. keys "
            f"(first key: {next(iter(obj), 'none')!r})."
        )
    return state


def infer_config(state: dict[str, torch.Tensor], path: str | os.PathLike = "checkpoint") -> dict[str, int]:
    """VQVAE constructor arguments implied by a (prefix-free) state dict's shapes."""
    for key in ("enc_b.blocks.0.weight", "quantize_t.embed"):
        if key not in state:
            raise VQVAECheckpointError(f"VQ-VAE checkpoint {path} is missing key {key!r}.")
    channel, in_channel = state["enc_b.blocks.0.weight"].shape[:2]
    embed_dim, n_embed = state["quantize_t.embed"].shape
    # Encoder convs sit at even indices 0, 2, ..., 2 * n_down; the last one is the 1x1 projection.
    n_down = sum(1 for k in state if k.startswith("enc_b.blocks.") and k.endswith(".weight")) - 1
    return {
        "in_channel": int(in_channel),
        "channel": int(channel),
        "embed_dim": int(embed_dim),
        "n_embed": int(n_embed),
        "stride": 2 * max(n_down, 1),
    }


def _check_matches(model: VQVAE, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    if missing:
        raise VQVAECheckpointError(f"VQ-VAE checkpoint {path} is missing key {missing[0]!r}.")
    unexpected = sorted(state.keys() - expected.keys())
    if unexpected:
        raise VQVAECheckpointError(f"VQ-VAE checkpoint {path} has unexpected key {unexpected[0]!r}.")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise VQVAECheckpointError(
                f"VQ-VAE checkpoint {path}: key {key!r} has shape {list(state[key].shape)}, "
                f"expected {list(tensor.shape)}."
            )


def load_vqvae(path: str | os.PathLike, device: str | torch.device = "cpu") -> VQVAE:
    """Load a VQ-VAE checkpoint (released or ours) → fp32 model in eval mode on `device`.

    Keys may carry the DDP `module.` prefix or not. The architecture is inferred from the shapes. Errors are
    one sentence: FileNotFoundError for a missing file, VQVAECheckpointError for anything else.
    """
    path = Path(path)
    state = _read_state_dict(path)
    with torch.device("meta"):
        model = VQVAE(**infer_config(state, path))
    _check_matches(model, state, path)
    model.load_state_dict(state, assign=True)
    return model.float().to(device).eval()
