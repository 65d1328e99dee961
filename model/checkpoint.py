"""Load and save CogView checkpoints in the released layout, and reshard them between model-parallel sizes.

Layout, the released one::

    {dir}/latest_checkpointed_iteration.txt      "142000" (or "release"); SAT names this file "latest"
    {dir}/142000/mp_rank_00_model_states.pt      {"module": state_dict, "iteration": ..., ...}
    {dir}/142000/mp_rank_01_model_states.pt      one file per model-parallel rank

Files are read with ``torch.load(weights_only=True)``; the numpy RNG state that DeepSpeed and CogView
store beside the weights is allowlisted, anything else needs an explicit ``trust_checkpoint=True``.
Writes are atomic and the tracker is written last, so a crash never leaves it pointing at a broken
checkpoint.
"""

import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import mpu
from common.atomic_files import atomic_torch_save, atomic_write_text, rename_into_place
from common.errors import InputError, MissingInputError

from .partition import (
    COGVIEW_NUM_TOKENS,
    EMBEDDING_KEY,
    PartitionError,
    check_divisible,
    merge_state_dicts,
    normalize_keys,
    padded_vocab_size,
    resize_vocab,
    shard_state_dict,
)

TRACKER_FILENAMES = (
    "latest_checkpointed_iteration.txt",
    "latest",
)  # CogView's name first, then SAT/DeepSpeed's
RELEASE = "release"
_SHARD_PATTERN = re.compile(r"mp_rank_(\d{2})_model_states\.pt")
# Client-state entries that mean the same on every rank and at any model-parallel size (kept when resharding);
# the rest (optimizer state, RNG states, world sizes) belongs to one rank of one layout.
_LAYOUT_FREE_ENTRIES = (
    "iteration",
    "client_lr_scheduler",
    "lr_scheduler",
    "global_steps",
    "global_samples",
    "skipped_steps",
)


class CheckpointError(InputError):
    """A checkpoint that exists but cannot be used; the message names the file and the key."""


class CheckpointNotFoundError(MissingInputError):
    """A checkpoint directory, tracker, iteration folder or shard file that is not there."""


def shard_filename(mp_rank: int) -> str:
    """``mp_rank_XX_model_states.pt``, the file of one model-parallel rank."""
    return f"mp_rank_{mp_rank:02d}_model_states.pt"


def read_tracker(load_dir: str | os.PathLike) -> str:
    """The iteration folder name that ``load_dir``'s tracker names: a decimal iteration or ``release``."""
    load_dir = Path(load_dir)
    if not load_dir.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {load_dir} does not exist")
    tracker = next((load_dir / name for name in TRACKER_FILENAMES if (load_dir / name).is_file()), None)
    if tracker is None:
        raise CheckpointNotFoundError(
            f"checkpoint directory {load_dir} has no tracker file ({' or '.join(TRACKER_FILENAMES)})"
        )
    content = tracker.read_text().strip()
    if content == RELEASE:
        return RELEASE
    if not content.isdigit():
        raise CheckpointError(
            f"tracker {tracker} holds {content!r}, expected an iteration number or {RELEASE!r}"
        )
    return str(int(content))


def _numpy_safe_globals() -> list:
    """The numpy objects found in DeepSpeed/CogView client state (``np_rng_state``, numpy scalars).

    Listed under numpy 2's module names and, for files written with numpy 1 (the 2021 releases), the old ones.
    """
    from numpy._core import multiarray

    numeric = "?" + np.typecodes["AllInteger"] + np.typecodes["Float"]  # bool, all integers, all floats
    dtype_classes = {type(np.dtype(code)) for code in numeric}
    return [
        np.ndarray,
        np.dtype,
        *dtype_classes,
        multiarray._reconstruct,
        multiarray.scalar,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]


# How torch's weights-only unpickler names what it refused, across torch versions: an unknown global, a
# global of a blocked module (os.system, the usual payload of a malicious pickle), or a disallowed class.
_REFUSED_PATTERNS = (
    r"Unsupported global: GLOBAL (\S+)",
    r"unsupported GLOBAL (\S+) whose module",
    r"but got <class '([^']+)'>",
)


def refused_global(error: BaseException) -> str | None:
    """The object that ``weights_only`` loading refused, if that is why ``error`` was raised (else None).

    A refusal means the file is whole but holds pickled objects beyond tensors (a Namespace, or code to
    run), which needs a different message from a truncated or corrupt file.
    """
    for pattern in _REFUSED_PATTERNS:
        match = re.search(pattern, str(error))
        if match:
            return match.group(1)
    return None


def read_shard(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """One ``mp_rank_XX_model_states.pt`` file, loaded safely on the CPU; it must hold ``'module'``.

    Zip-format files are memory-mapped, so a 4B-parameter checkpoint is not read into memory twice.
    ``trust_checkpoint`` allows arbitrary pickled objects (only for files from a trusted source).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint shard {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            payload = torch.load(
                path, map_location="cpu", weights_only=not trust_checkpoint, mmap=zipfile.is_zipfile(path)
            )
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as error:
        refused = refused_global(error)
        if refused is not None:
            raise CheckpointError(
                f"{path} holds a pickled {refused}, which safe loading refuses; pass trust_checkpoint=True "
                "(--trust-checkpoint) only if you trust the file's source"
            ) from error
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or corrupt ({reason[:200]})"
        ) from error
    if not isinstance(payload, Mapping) or "module" not in payload:
        found = sorted(map(str, payload)) if isinstance(payload, Mapping) else type(payload).__name__
        raise CheckpointError(f"{path} has no 'module' entry (found {found}); it is not a model-states file")
    return dict(payload)


def _shard_files(folder: Path) -> list[Path]:
    """The ``mp_rank_XX`` files of an iteration folder, ranks 0..n-1 with none missing."""
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"iteration folder {folder} named by the tracker does not exist")
    ranks = sorted(int(m.group(1)) for f in folder.iterdir() if (m := _SHARD_PATTERN.fullmatch(f.name)))
    if not ranks:
        raise CheckpointNotFoundError(
            f"{folder} holds no model-states file; expected {folder / shard_filename(0)}"
        )
    missing = next((rank for rank in range(ranks[-1] + 1) if rank not in ranks), None)
    if missing is not None:
        raise CheckpointNotFoundError(f"model-parallel shard {folder / shard_filename(missing)} is missing")
    return [folder / shard_filename(rank) for rank in ranks]


def _check_shard_count(payload: Mapping[str, Any], files: list[Path]) -> None:
    """Catch a missing last shard: DeepSpeed and :func:`save_checkpoint` record the model-parallel size."""
    recorded = payload.get("mp_world_size")
    if isinstance(recorded, int) and recorded > len(files):
        raise CheckpointNotFoundError(
            f"model-parallel shard {files[0].with_name(shard_filename(len(files)))} is missing "
            f"({files[0]} records mp_world_size {recorded})"
        )


def _local_state(folder: Path, model_state: Mapping[str, torch.Tensor], trust: bool) -> tuple[dict, Path]:
    """This rank's state dict from ``folder``, split on the fly when the folder holds one MP=1 file."""
    rank, size = mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()
    files = _shard_files(folder)
    if len(files) == 1:
        path = files[0]
        payload = read_shard(path, trust_checkpoint=trust)
        _check_shard_count(payload, files)
        state = normalize_keys(payload["module"])
        if EMBEDDING_KEY in state and EMBEDDING_KEY in model_state:
            # Zero-pad the vocabulary to the rows the model holds in all (padding grows with the MP size).
            rows = model_state[EMBEDDING_KEY].size(0) * size
            if state[EMBEDDING_KEY].size(0) < rows:
                state = resize_vocab(state, rows)
        if size > 1:
            try:
                state = shard_state_dict(state, size, rank)
            except PartitionError as error:
                raise CheckpointError(
                    f"cannot split {path} for model-parallel size {size}: {error}"
                ) from error
        return state, path
    if len(files) != size:
        raise CheckpointError(
            f"{folder} holds {len(files)} model-parallel shards but the model runs at model-parallel "
            f"size {size}; convert it with tools/reshard_checkpoint.py --target-mp {size}"
        )
    path = files[rank]
    return normalize_keys(read_shard(path, trust_checkpoint=trust)["module"]), path


POSITION_KEY = "transformer.position_embeddings.weight"  # [max_position_embeddings, hidden_size]
_LAYER_KEY = re.compile(r"transformer\.layers\.(\d+)\.")


def _sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The model sizes a state dict shows: layers, hidden size and positions (not the head count)."""
    layers = {int(match.group(1)) for key in state if (match := _LAYER_KEY.match(key))}
    sizes = {"--num-layers": max(layers) + 1 if layers else 0}
    if POSITION_KEY in state and state[POSITION_KEY].dim() == 2:
        sizes["--max-position-embeddings"], sizes["--hidden-size"] = state[POSITION_KEY].shape
    return sizes


def _check_model_size(
    state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], path: Path
) -> None:
    """Name the size argument that differs, instead of hundreds of missing keys or wrong shapes."""
    found, expected = _sizes(state), _sizes(model_state)
    for flag, what in (
        ("--num-layers", "{} layers"),
        ("--hidden-size", "hidden size {}"),
        ("--max-position-embeddings", "{} position embeddings"),
    ):
        if flag in found and flag in expected and found[flag] != expected[flag]:
            raise CheckpointError(
                f"{path}: the checkpoint has {what.format(found[flag])}, the model {expected[flag]}: "
                f"pass {flag} {found[flag]}"
            )


def _check_against_model(
    state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], path: Path, strict: bool
) -> None:
    """One clear error: a model size that differs, else the first missing key, unexpected key (when
    ``strict``) or wrong shape."""
    _check_model_size(state, model_state, path)
    if strict:
        missing = [key for key in model_state if key not in state]
        unexpected = [key for key in state if key not in model_state]
        for keys, what in (
            (missing, "lacks key {} that the model needs"),
            (unexpected, "has unexpected key {}"),
        ):
            if keys:
                more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
                raise CheckpointError(f"{path} {what.format(repr(keys[0]))}{more}")
    for key, tensor in state.items():
        if key in model_state and tensor.shape != model_state[key].shape:
            hint = (
                "; the vocabulary padding depends on the model-parallel size, see tools/reshard_checkpoint.py"
                if key == EMBEDDING_KEY
                else ""
            )
            raise CheckpointError(
                f"{path}: key {key!r} has shape {list(tensor.shape)} in the checkpoint but "
                f"{list(model_state[key].shape)} in the model{hint}"
            )


def load_checkpoint(
    model: nn.Module, load_dir: str | os.PathLike, *, strict: bool = True, trust_checkpoint: bool = False
) -> int | str:
    """Load the checkpoint that ``load_dir``'s tracker names into ``model``; returns its iteration.

    Reads ``{load_dir}/{iteration}/mp_rank_XX_model_states.pt`` for this model-parallel rank and takes
    its ``'module'``. Accepts SAT's embedding key spelling, fp16 or fp32 on disk (copied into the
    model's dtype), an MP=1 file for a model at MP=p (padded and split on the fly) and a vocabulary with
    fewer padding rows than the model. Returns the iteration number, or ``"release"``.
    """
    iteration = read_tracker(load_dir)
    model_state = model.state_dict()
    state, path = _local_state(Path(load_dir) / iteration, model_state, trust_checkpoint)
    _check_against_model(state, model_state, path, strict)
    model.load_state_dict(state, strict=strict)  # copy_ casts fp16/fp32 on disk to each parameter's dtype
    return iteration if iteration == RELEASE else int(iteration)


def write_tracker(save_dir: str | os.PathLike, iteration: int | str) -> Path:
    """Atomically write ``{save_dir}/latest_checkpointed_iteration.txt`` holding ``iteration``."""
    tracker = Path(save_dir) / TRACKER_FILENAMES[0]
    atomic_write_text(tracker, str(iteration))
    return tracker


def save_checkpoint(
    model: nn.Module,
    save_dir: str | os.PathLike,
    iteration: int | str,
    client_state: Mapping[str, Any] | None = None,
) -> Path:
    """Save this rank's shard as ``{save_dir}/{iteration}/mp_rank_XX_model_states.pt``; returns its path.

    The file holds ``{'module': model.state_dict(), 'iteration', 'mp_world_size', **client_state}``, written
    by data-parallel rank 0 of each model-parallel rank. After a barrier (when ``torch.distributed`` is
    initialised) global rank 0 writes the tracker, last, so it only ever names a complete checkpoint.
    """
    client_state = dict(client_state or {})
    if "module" in client_state:
        raise ValueError("client_state must not contain 'module': that entry holds the model's state dict")
    folder = Path(save_dir) / str(iteration)
    path = folder / shard_filename(mpu.get_model_parallel_rank())
    if mpu.get_data_parallel_rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "iteration": iteration,
            "mp_world_size": mpu.get_model_parallel_world_size(),
            **client_state,
            "module": model.state_dict(),
        }
        atomic_torch_save(payload, path)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.barrier()
    if not distributed or dist.get_rank() == 0:
        write_tracker(save_dir, iteration)
    if distributed:
        dist.barrier()  # nobody reads the tracker before it exists
    return path


def reshard_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    target_mp: int,
    *,
    num_tokens: int = COGVIEW_NUM_TOKENS,
    trust_checkpoint: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Rewrite the checkpoint in ``src`` as ``target_mp`` shards (model-parallel ranks) in ``dst``.

    Merges all shards (stride-3 QKV, row and column splits), pads or cuts the vocabulary to what a model at
    ``target_mp`` allocates (rows from ``num_tokens`` on are padding), splits, and writes the same iteration
    folder and the tracker under a temporary name that becomes ``dst`` at the end (``dst`` must be new or
    empty; on failure nothing is left). Only entries that mean the same at any layout are carried over
    (``iteration``, learning-rate schedule, step counters); optimizer and RNG states are dropped. Whether
    the attention heads divide by ``target_mp`` cannot be read from the file: check that yourself.
    Returns the new iteration folder; ``log`` receives one progress line per shard.
    """
    src, dst = Path(src), Path(dst)
    if target_mp < 1:
        raise CheckpointError(f"target model-parallel size must be at least 1, got {target_mp}")
    if num_tokens < 1:
        raise CheckpointError(
            f"the number of real tokens (--num-tokens) must be at least 1, got {num_tokens}"
        )
    iteration = read_tracker(src)
    if dst.resolve() == src.resolve():
        raise CheckpointError(
            f"destination {dst} is the source directory; write the resharded copy elsewhere"
        )
    if dst.is_file() or (dst.is_dir() and any(dst.iterdir())):
        raise CheckpointError(f"destination {dst} already exists and is not empty; choose a new directory")

    files = _shard_files(src / iteration)
    payloads = []
    for index, path in enumerate(files, 1):
        log(f"reading {path} ({index}/{len(files)})")
        payloads.append(read_shard(path, trust_checkpoint=trust_checkpoint))
    _check_shard_count(payloads[0], files)
    try:
        merged = merge_state_dicts([payload["module"] for payload in payloads], names=[str(f) for f in files])
        if EMBEDDING_KEY in merged and merged[EMBEDDING_KEY].size(0) < num_tokens:
            raise PartitionError(
                f"{EMBEDDING_KEY} has {merged[EMBEDDING_KEY].size(0)} rows, fewer than {num_tokens} tokens; "
                "pass --num-tokens with the size of the model's vocabulary (len() of its tokenizer; "
                f"the default {COGVIEW_NUM_TOKENS} is the released models')"
            )
        merged = resize_vocab(merged, padded_vocab_size(num_tokens, target_mp), num_tokens)
        check_divisible(merged, target_mp)
    except PartitionError as error:
        raise CheckpointError(
            f"cannot reshard {src / iteration} to model-parallel size {target_mp}: {error}"
        ) from error
    kept = {key: payloads[0][key] for key in _LAYOUT_FREE_ENTRIES if key in payloads[0]}
    dropped = sorted(set(payloads[0]) - set(kept) - {"module", "mp_world_size"})
    if dropped:
        log(f"not carried over (they belong to one rank of the old layout): {', '.join(dropped)}")
    del payloads

    # The whole destination is written under a hidden name beside it and renamed at the end, so a failure
    # or an interruption leaves nothing behind that would block a rerun or pass for a checkpoint.
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    try:
        (staging / iteration).mkdir(parents=True)
        for rank in range(target_mp):
            payload = {
                **kept,
                "mp_world_size": target_mp,
                "module": shard_state_dict(merged, target_mp, rank),
            }
            path = staging / iteration / shard_filename(rank)
            atomic_torch_save(payload, path)
            log(f"wrote {dst / iteration / shard_filename(rank)} ({rank + 1}/{target_mp})")
        write_tracker(staging, iteration)
        rename_into_place(staging, dst)  # dst is absent or an empty directory, which rename replaces
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {dst / TRACKER_FILENAMES[0]} -> {iteration}")
    return dst / iteration
