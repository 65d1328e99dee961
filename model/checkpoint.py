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

import ctypes
import functools
import mmap
import os
import pickle
import re
import shutil
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
# Precisions a checkpoint's weights can be stored in (``reshard_checkpoint(dtype=...)``), by their flag names.
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_LAYOUT_FREE_ENTRIES = (
    "iteration",
    "client_lr_scheduler",
    "lr_scheduler",
    "global_steps",
    "global_samples",
    "skipped_steps",
    "skipped_iters",
    "consumed_train_samples",
    "consumed_valid_samples",
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


def is_memory_mappable(path: str | os.PathLike) -> bool:
    """Whether ``torch.load(path, mmap=True)`` works: the zip format that ``torch.save`` writes since 1.6.

    Files in the legacy format (``_use_new_zipfile_serialization=False``) are read into memory instead.
    """
    return zipfile.is_zipfile(path)


def read_shard(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> dict[str, Any]:
    """One ``mp_rank_XX_model_states.pt`` file, loaded safely on the CPU; it must hold ``'module'``.

    Zip-format files are memory-mapped (see :func:`is_memory_mappable`): tensors are read from the file
    only when touched, so a 4B-parameter checkpoint is not read into memory before it is converted.
    ``trust_checkpoint`` allows arbitrary pickled objects (only for files from a trusted source).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint shard {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            payload = torch.load(
                path, map_location="cpu", weights_only=not trust_checkpoint, mmap=is_memory_mappable(path)
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


@dataclass(frozen=True)
class _LocalShard:
    """The file tensors this rank loads from, and how each becomes the tensor the model holds."""

    path: Path
    state: dict[str, torch.Tensor]  # the file's tensors, memory-mapped when ``mapped``
    local: Callable[[str, torch.Tensor], torch.Tensor]  # file tensor -> this rank's (padded, split) tensor
    mapped: bool


def _local_state(folder: Path, model_state: Mapping[str, torch.Tensor], trust: bool) -> _LocalShard:
    """This rank's tensors from ``folder``, split on the fly, tensor by tensor, if it holds one MP=1 file."""
    rank, size = mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()
    files = _shard_files(folder)
    if len(files) == 1:
        path = files[0]
        payload = read_shard(path, trust_checkpoint=trust)
        _check_shard_count(payload, files)
        state = normalize_keys(payload["module"])
        # Zero-pad the vocabulary to what the model holds in all (the padding depends on the MP size).
        rows = model_state[EMBEDDING_KEY].size(0) * size if EMBEDDING_KEY in model_state else 0

        def local(key: str, tensor: torch.Tensor) -> torch.Tensor:
            if key == EMBEDDING_KEY and tensor.size(0) < rows:
                tensor = resize_vocab({key: tensor}, rows)[key]
            return shard_state_dict({key: tensor}, size, rank)[key] if size > 1 else tensor

        return _LocalShard(path, state, local, is_memory_mappable(path))
    if len(files) != size:
        raise CheckpointError(
            f"{folder} holds {len(files)} model-parallel shards but the model runs at model-parallel "
            f"size {size}; convert it with tools/reshard_checkpoint.py --target-mp {size}"
        )
    path = files[rank]
    state = normalize_keys(read_shard(path, trust_checkpoint=trust)["module"])
    return _LocalShard(path, state, lambda key, tensor: tensor, is_memory_mappable(path))


def _local_shapes(shard: _LocalShard) -> dict[str, torch.Tensor]:
    """Meta tensors with the shapes ``shard.local`` gives, computed without reading any weights."""
    try:
        return {key: shard.local(key, torch.empty_like(t, device="meta")) for key, t in shard.state.items()}
    except PartitionError as error:
        size = mpu.get_model_parallel_world_size()
        raise CheckpointError(f"cannot split {shard.path} for model-parallel size {size}: {error}") from error


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
    model: nn.Module,
    load_dir: str | os.PathLike,
    *,
    strict: bool = True,
    trust_checkpoint: bool = False,
    device: torch.device | str = "cpu",
) -> int | str:
    """Load the checkpoint that ``load_dir``'s tracker names into ``model``; returns its iteration.

    Reads ``{load_dir}/{iteration}/mp_rank_XX_model_states.pt`` for this model-parallel rank and takes
    its ``'module'``. Accepts SAT's embedding key spelling, fp16 or fp32 on disk (converted to the
    model's dtype), an MP=1 file for a model at MP=p (padded and split on the fly) and a vocabulary with
    fewer padding rows than the model. Returns the iteration number, or ``"release"``.

    Memory stays bounded: the file is memory-mapped and converted one tensor at a time, and each tensor's
    file pages are released once it is converted, so the peak is the model's weights plus one tensor.
    A model built on the ``meta`` device gets new tensors on ``device``, in the dtype of its meta
    parameters (nothing is allocated twice); a materialised model is copied into in place, so an
    optimizer's references to its parameters stay valid.
    """
    iteration = read_tracker(load_dir)
    model_state = model.state_dict()
    shard = _local_state(Path(load_dir) / iteration, model_state, trust_checkpoint)
    _check_against_model(_local_shapes(shard), model_state, shard.path, strict)
    _load_tensor_by_tensor(model, shard, torch.device(device))
    unloaded = next((key for key, tensor in model.state_dict().items() if tensor.is_meta), None)
    if unloaded is not None:
        raise CheckpointError(
            f"{shard.path} lacks key {unloaded!r}, which a model built on the meta device cannot do without"
        )
    return iteration if iteration == RELEASE else int(iteration)


def _load_tensor_by_tensor(model: nn.Module, shard: _LocalShard, device: torch.device) -> None:
    """Move each of ``shard``'s tensors into ``model``, dropping the file's copy as soon as it is used."""
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key in list(shard.state):
            stored = shard.state.pop(key)  # the last reference: a file read into memory is freed as we go
            target = targets.get(key)
            if target is not None:
                value = shard.local(key, stored)
                if target.is_meta:
                    converted = value.to(device=device, dtype=target.dtype)
                    _materialise(model, key, target, converted.clone() if converted is stored else converted)
                else:
                    target.copy_(value)  # casts fp16/fp32 on disk to the parameter's dtype and device
            if shard.mapped:
                _release_file_pages(stored)


def _materialise(model: nn.Module, key: str, placeholder: torch.Tensor, value: torch.Tensor) -> None:
    """Put ``value`` where the meta tensor ``placeholder`` (state-dict entry ``key``) was."""
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(placeholder, nn.Parameter):
        parameter = nn.Parameter(value, requires_grad=placeholder.requires_grad)
        # keep the model-parallel attributes that gradient clipping and resharding read
        parameter.__dict__.update(placeholder.__dict__)
        value = parameter
    setattr(module, name, value)


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise``, on Linux; elsewhere file pages are left to the operating system."""
    if not sys.platform.startswith("linux"):
        return None
    function = ctypes.CDLL(None, use_errno=True).madvise
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _release_file_pages(tensor: torch.Tensor) -> None:
    """Drop the whole pages under ``tensor`` from this process's resident memory (``MADV_DONTNEED``).

    Only for tensors on the private, never-written file mapping of ``torch.load(mmap=True)``: the pages
    stay in the page cache and are read back from the file if touched again, so nothing is lost. Without
    this, every page read while converting stays resident until the whole file is unmapped, which adds
    the file's size (7.9 GB for the 4B model) to the peak memory.
    """
    madvise = _madvise()
    storage = tensor.untyped_storage()
    start = -(-storage.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (storage.data_ptr() + storage.nbytes()) // mmap.PAGESIZE * mmap.PAGESIZE
    if madvise is not None and end > start:
        madvise(start, end - start, mmap.MADV_DONTNEED)


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
    dtype: torch.dtype | None = None,
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
    With ``dtype`` the floating-point weights are stored in it (e.g. ``torch.float16``, as the released
    checkpoints are: half the size; the loaders cast to the model's dtype). Returns the new iteration
    folder; ``log`` receives one progress line per shard.
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
        if dtype is not None:
            merged = {
                key: value.to(dtype) if value.is_floating_point() else value for key, value in merged.items()
            }
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
