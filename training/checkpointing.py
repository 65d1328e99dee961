"""Saving and resuming training in the released layout, with DeepSpeed's optimizer files beside it.

    {save}/latest_checkpointed_iteration.txt          written last, atomically
    {save}/{iteration}/mp_rank_XX_model_states.pt     {'module': weights, client state, DeepSpeed's keys}
    {save}/{iteration}/zero_pp_rank_D_mp_rank_XX_optim_states.pt   (ZeRO-1/2)

A DeepSpeed save goes to a hidden `.{iteration}.partial` folder that is renamed into place once every
rank has written its files, and only then does the tracker name it; so a crash mid-save leaves the
previous checkpoint in force. The client state holds what an exact resume needs: iteration, the
learning-rate schedule, python / numpy / torch / CUDA RNG states and the mpu RNG tracker, the skipped
iteration count and the samples consumed (the data position).
"""

import argparse
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import mpu
from common.atomic_files import rename_into_place
from learning_rates import AnnealingLR
from model.checkpoint import (
    RELEASE,
    CheckpointError,
    read_shard,
    read_tracker,
    shard_filename,
    write_tracker,
)
from model.checkpoint import (
    load_checkpoint as load_model_weights,
)
from model.checkpoint import (
    save_checkpoint as save_model_shard,
)
from training import optimizer_state
from training.engine import get_param_groups, unwrap
from training.step import is_deepspeed_engine


@dataclass
class TrainingProgress:
    """Counters that a resumed run continues from."""

    iteration: int = 0
    skipped_iters: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0


def _is_rank_0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, under the original's client-state keys."""
    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "rng_tracker_states": mpu.get_cuda_rng_tracker().get_states(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states of :func:`rng_state`."""
    random.setstate(_as_python_random_state(state["random_rng_state"]))
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    if state.get("cuda_rng_state") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
    mpu.get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


def _as_python_random_state(state: Any) -> tuple:
    """`random.setstate` needs tuples; a round trip through some pickle paths yields lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


def client_state(progress: TrainingProgress, lr_scheduler: AnnealingLR, args: argparse.Namespace) -> dict:
    """What CogView stores beside the weights, plus the counters of :class:`TrainingProgress`."""
    state = {
        "iteration": progress.iteration,
        "client_lr_scheduler": lr_scheduler.state_dict(),
        "skipped_iters": progress.skipped_iters,
        "consumed_train_samples": progress.consumed_train_samples,
        "consumed_valid_samples": progress.consumed_valid_samples,
    }
    if not args.no_save_rng:
        state.update(rng_state())
    return state


def check_save_dir(save_dir: str | os.PathLike) -> None:
    """Fail before training, with one line, when `save_dir` cannot be created or written."""
    path = Path(save_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"cannot write checkpoints to --save {path}: {error.strerror}") from None


def _already_saved(save_dir: Path, iteration: int) -> bool:
    try:
        return read_tracker(save_dir) == str(iteration) and (save_dir / str(iteration)).is_dir()
    except (CheckpointError, FileNotFoundError):
        return False


def save_checkpoint(
    iteration: int,
    model: nn.Module,
    optimizer: Any,
    lr_scheduler: AnnealingLR,
    args: argparse.Namespace,
    progress: TrainingProgress,
) -> Path | None:
    """Save iteration `iteration` under `args.save`; returns its folder (None when it is already there)."""
    save_dir = Path(args.save)
    if _already_saved(save_dir, iteration):
        return None
    progress.iteration = iteration
    state = client_state(progress, lr_scheduler, args)
    final = save_dir / str(iteration)
    if is_deepspeed_engine(model) and not args.no_save_optim:
        partial = f".{iteration}.partial"
        if _is_rank_0() and (save_dir / partial).exists():
            shutil.rmtree(save_dir / partial)  # left by a crash mid-save
        _barrier()
        model.save_checkpoint(str(save_dir), tag=partial, client_state=state, save_latest=False)
        _barrier()
        if _is_rank_0():
            if final.exists():  # an iteration the tracker does not name (an abandoned later run)
                shutil.rmtree(final)
            rename_into_place(save_dir / partial, final)
            write_tracker(save_dir, iteration)
        _barrier()
    else:
        if not args.no_save_optim:
            state["optimizer"] = optimizer.state_dict()
            state["lr_scheduler"] = lr_scheduler.state_dict()
        save_model_shard(unwrap(model), save_dir, iteration, state)
    if _is_rank_0():
        print(f"saved checkpoint {final}", flush=True)
    return final


def _own_shard(folder: Path, trust: bool) -> dict[str, Any]:
    """This model-parallel rank's model-states file (rank 0's when the folder holds a single MP=1 file)."""
    path = folder / shard_filename(mpu.get_model_parallel_rank())
    if not path.is_file():
        path = folder / shard_filename(0)
    return read_shard(path, trust_checkpoint=trust)


def _same_zero_layout(model: nn.Module, payload: dict[str, Any], folder: Path) -> bool:
    """Whether DeepSpeed can load the optimizer files itself: it wrote them, at this data-parallel size
    and ZeRO use."""
    if "ds_version" not in payload:  # written by the plain-torch path or with --no-save-optim
        return False
    stage = model.zero_optimization_stage()
    has_zero_files = optimizer_state.zero_file(folder, 0, mpu.get_model_parallel_rank()).is_file()
    if stage == 0:
        return not has_zero_files and payload.get("optimizer") is not None
    return has_zero_files and payload.get("dp_world_size") == mpu.get_data_parallel_world_size()


def _saved_optimizer_state(model: nn.Module, payload: dict[str, Any], folder: Path):
    """The checkpoint's optimizer state by parameter name, whatever layout wrote it (None if not saved)."""
    if optimizer_state.zero_file(folder, 0, mpu.get_model_parallel_rank()).is_file():
        return optimizer_state.from_zero_files(folder, payload, mpu.get_model_parallel_rank())
    if isinstance(payload.get("optimizer"), dict) and "state" in payload["optimizer"]:
        names = optimizer_state.ordered_param_names(unwrap(model), get_param_groups(model))
        return optimizer_state.from_torch_state_dict(payload["optimizer"], names)
    return None


def _load_optimizer(
    model: nn.Module, optimizer: Any, args: argparse.Namespace, payload: dict, folder: Path
) -> None:
    if is_deepspeed_engine(model) and _same_zero_layout(model, payload, folder):
        model.load_checkpoint(
            args.load, tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        return
    saved = _saved_optimizer_state(model, payload, folder)
    if saved is None:
        raise CheckpointError(
            f"{folder} holds no optimizer state (saved with --no-save-optim?); resume with --no-load-optim"
        )
    if is_deepspeed_engine(model) and model.zero_optimization_stage() > 0:
        optimizer_state.apply_to_zero_optimizer(model.optimizer, unwrap(model), saved)
    else:
        optimizer_state.apply_to_torch_optimizer(
            getattr(optimizer, "optimizer", optimizer), unwrap(model), saved
        )
    if is_deepspeed_engine(model):
        model.global_steps = int(payload.get("global_steps", model.global_steps))
        model.global_samples = int(payload.get("global_samples", model.global_samples))


def _refresh_master_weights(model: nn.Module, optimizer: Any) -> None:
    """After loading weights into the module, copy them into DeepSpeed's fp32 master copies (if any)."""
    if is_deepspeed_engine(model) and hasattr(optimizer, "refresh_fp32_params"):
        optimizer.refresh_fp32_params()


def load_checkpoint(
    model: nn.Module, optimizer: Any, lr_scheduler: AnnealingLR, args: argparse.Namespace
) -> TrainingProgress:
    """Resume from `args.load` (or start a finetune from it); returns the counters to continue from.

    The weights always go through the checked loader (one clear line for another model shape,
    vocabulary or model-parallel size). Unless finetuning, the optimizer (`--no-load-optim` skips
    it), the learning-rate schedule, the RNG states (`--no-load-rng` skips them) and the counters are
    restored too. `--finetune` and `release` checkpoints start at iteration 0 with fresh optimizer
    and RNG state, as the original.
    """
    iteration_name = read_tracker(args.load)
    folder = Path(args.load) / iteration_name
    load_model_weights(unwrap(model), args.load, trust_checkpoint=args.trust_checkpoint)
    _refresh_master_weights(model, optimizer)
    payload = _own_shard(folder, args.trust_checkpoint)
    if args.finetune or iteration_name == RELEASE:
        return TrainingProgress()
    if not args.no_load_optim:
        _load_optimizer(model, optimizer, args, payload, folder)
    schedule = payload.get("client_lr_scheduler") or payload.get("lr_scheduler")
    if isinstance(schedule, dict):
        lr_scheduler.load_state_dict(schedule)
    if not args.no_load_rng:
        missing = [key for key in ("torch_rng_state", "rng_tracker_states") if key not in payload]
        if missing:
            raise CheckpointError(
                f"{folder} lacks the RNG state {missing[0]!r} (saved with --no-save-rng?); pass --no-load-rng"
            )
        restore_rng(payload)
    return TrainingProgress(
        iteration=int(payload.get("iteration", int(iteration_name))),
        skipped_iters=int(payload.get("skipped_iters", 0)),
        consumed_train_samples=int(payload.get("consumed_train_samples", 0)),
        consumed_valid_samples=int(payload.get("consumed_valid_samples", 0)),
    )
