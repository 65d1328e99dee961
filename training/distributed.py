"""Process set-up for training: launcher environment, process groups, seeds, and a clean exit.

DeepSpeed needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT even for one process (without
them it tries MPI discovery); a plain `python pretrain_gpt2.py` gets them filled in here. Training always
initialises `torch.distributed` (gloo on the CPU, the chosen backend on CUDA), so the same code path
serves one process and many.
"""

import argparse
import contextlib
import importlib
import os
import random
import socket
import sys
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

import mpu
from common.devices import process_device
from training.errors import TrainingSetupError

DEFAULT_MASTER_ADDR = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((DEFAULT_MASTER_ADDR, 0))
        return sock.getsockname()[1]


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def launcher_env_restored() -> Iterator[None]:
    """Put the launcher variables back as they were afterwards, so a run called from Python (a test, a
    notebook) leaves no RANK or MASTER_PORT behind for the processes it starts later."""
    saved = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensure_launcher_env(args: argparse.Namespace) -> None:
    """Fill in the launcher variables a single process started by hand lacks (a free local port)."""
    os.environ.setdefault("RANK", str(args.rank))
    os.environ.setdefault("WORLD_SIZE", str(args.world_size))
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank if args.local_rank is not None else 0))
    os.environ.setdefault("MASTER_ADDR", DEFAULT_MASTER_ADDR)
    if "MASTER_PORT" not in os.environ:
        if args.world_size > 1:
            raise TrainingSetupError(
                "MASTER_PORT is not set; start several processes with torchrun or deepspeed"
            )
        os.environ["MASTER_PORT"] = str(_free_port())
    if args.local_rank is None:
        args.local_rank = int(os.environ["LOCAL_RANK"])


def training_device(args: argparse.Namespace) -> torch.device:
    """The CUDA device of this process's local rank when `--device` is CUDA, else the CPU."""
    device = process_device(args.device, args.local_rank or 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def skip_deepspeed_shm_build() -> None:
    """Stop DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce (about 30 s).

    Communication then goes through plain gloo, which is what the CPU path is tested with. The module
    is taken from `sys.modules` because `import deepspeed.comm.torch as m` binds the real `torch`
    package (a star-import name clash inside DeepSpeed).
    """
    importlib.import_module("deepspeed.comm.torch")
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def initialize_distributed(args: argparse.Namespace, device: torch.device) -> None:
    """The process group and mpu's model-/data-parallel groups (DeepSpeed's comm too, when used)."""
    ensure_launcher_env(args)
    backend = args.distributed_backend if device.type == "cuda" else "gloo"
    if args.deepspeed:
        skip_deepspeed_shm_build()
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    elif not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            rank=args.rank,
            world_size=args.world_size,
        )
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(args.model_parallel_size)


def set_random_seed(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch, and the model-parallel RNG stream (seed + 2718 + mp rank)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    mpu.model_parallel_cuda_manual_seed(seed, device.type)


def shutdown_distributed() -> None:
    """Barrier, then destroy the process group: without it gloo runs sometimes abort at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    mpu.destroy_model_parallel()
