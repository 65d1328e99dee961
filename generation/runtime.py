"""Process set-up for generation: device, dtype, process groups, seeds, tokenizer, model, weights.

Unlike the original, a single process needs no ``torch.distributed`` at all; process groups are made only
when a launcher starts several (``WORLD_SIZE`` > 1), with gloo on the CPU. The model is built on the
``meta`` device and materialised tensor by tensor from the memory-mapped checkpoint, in its final dtype
and device, so a 4B model never exists twice in memory (there is no random initialisation to waste).
"""

import argparse
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import mpu
from common.devices import process_device
from common.errors import MissingInputError
from common.paths import RELEASED_CHECKPOINTS_HINT, RELEASED_VQVAE_HINT
from data_utils import UnifiedTokenizer, get_tokenizer
from model import GPT2Config, GPT2Model
from model.checkpoint import CheckpointNotFoundError, load_checkpoint, read_tracker
from model.offload import offload_layers
from model.partition import padded_vocab_size

DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT = "localhost", "6000"


class MissingWeightsError(MissingInputError):
    """The model checkpoint or the VQ-VAE file is not where the arguments say."""


def check_weights(args: argparse.Namespace) -> None:
    """Fail fast, before anything is loaded, if ``--load`` or ``--img-tokenizer-path`` points at nothing.

    The message says where the released weights belong.
    """
    where = (
        f"put the released CogView weights in {RELEASED_CHECKPOINTS_HINT} (the folder holding "
        "latest_checkpointed_iteration.txt and 142000/mp_rank_00_model_states.pt) or pass --load DIR"
    )
    if args.load is None:
        raise MissingWeightsError(f"no model checkpoint given: {where}")
    try:
        read_tracker(args.load)
    except CheckpointNotFoundError as error:
        raise MissingWeightsError(f"{error}: {where}") from error
    if args.post_select > 1:
        for folder in args.post_select_load or ():
            try:
                read_tracker(folder)
            except CheckpointNotFoundError as error:
                raise MissingWeightsError(f"--post-select-load: {error}") from error
    vqvae_where = f"put the released VQ-VAE at {RELEASED_VQVAE_HINT} or pass --img-tokenizer-path FILE"
    if args.img_tokenizer_path is None:
        raise MissingWeightsError(f"no VQ-VAE given: {vqvae_where}")
    if not Path(args.img_tokenizer_path).is_file():
        raise MissingWeightsError(f"VQ-VAE file {args.img_tokenizer_path} does not exist: {vqvae_where}")


def init_device(args: argparse.Namespace) -> torch.device:
    """The device this process runs on; ``--device cuda`` (no index) means the GPU of its local rank."""
    local_rank = args.local_rank if args.local_rank is not None else args.rank
    device = process_device(args.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(args: argparse.Namespace, device: torch.device) -> bool:
    """With ``WORLD_SIZE`` > 1: the process group (unless the caller made one) and the model-parallel groups.

    Returns whether a process group was created here, i.e. whether the caller must destroy it. A single
    process needs neither.
    """
    if args.world_size == 1:
        return False
    created = not dist.is_initialized()
    if created:
        address = os.environ.get("MASTER_ADDR", DEFAULT_MASTER_ADDR)
        port = os.environ.get("MASTER_PORT", DEFAULT_MASTER_PORT)
        dist.init_process_group(
            args.distributed_backend if device.type == "cuda" else "gloo",
            init_method=f"tcp://{address}:{port}",
            rank=args.rank,
            world_size=args.world_size,
        )
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(args.model_parallel_size)
    return created


def set_random_seed(seed: int, device: torch.device) -> None:
    """Seed Python, numpy and torch, and the model-parallel RNG stream, as the original did."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    mpu.model_parallel_cuda_manual_seed(seed, device.type)


def model_dtype(args: argparse.Namespace) -> torch.dtype:
    """fp16 with ``--fp16``, bf16 with ``--bf16``, else fp32 (the fast choice on CPUs)."""
    if args.fp16:
        return torch.float16
    if args.bf16:
        return torch.bfloat16
    return torch.float32


def build_tokenizer(args: argparse.Namespace, device: torch.device) -> UnifiedTokenizer:
    """The unified tokenizer from ``--img-tokenizer-path`` and ``--text-tokenizer-path``.

    It is also installed as the process-wide tokenizer, for code that calls ``get_tokenizer()``.
    """
    tokenizer = UnifiedTokenizer(
        args.img_tokenizer_path,
        device,
        img_tokenizer_num_tokens=args.img_tokenizer_num_tokens,
        txt_tokenizer_path=args.text_tokenizer_path,
    )
    return get_tokenizer(tokenizer=tokenizer)


def build_model(
    args: argparse.Namespace,
    num_tokens: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    load: str | os.PathLike | None = None,
) -> GPT2Model:
    """``GPT2Model`` from the size arguments, loaded from ``load`` (default ``--load``), eval, on ``device``.

    ``load`` serves another model of the same architecture, e.g. a ``--post-select-load`` caption model.

    The vocabulary is ``num_tokens`` padded to a multiple of 128 × the model-parallel size, as the original
    (``model.config.vocab_size``). There is no ``max_memory_length``: generation uses the key/value cache.
    The weights are converted tensor by tensor from the memory-mapped checkpoint straight into ``dtype``
    on ``device`` (peak memory: the weights plus one tensor). With ``--offload`` they are loaded into CPU
    memory and each transformer layer moves to ``device`` only while it runs (see
    :func:`model.offload.offload_layers`).
    """
    vocab_size = padded_vocab_size(
        num_tokens, mpu.get_model_parallel_world_size(), args.make_vocab_size_divisible_by
    )
    config = GPT2Config.from_args(
        args, vocab_size, parallel_output=False, max_memory_length=0, checkpoint_activations=False
    )
    with torch.device("meta"):
        model = GPT2Model(config)
    model = model.to(dtype)  # still on meta: the dtype the checkpoint's tensors are converted to
    load_checkpoint(
        model,
        load or args.load,
        trust_checkpoint=args.trust_checkpoint,
        device="cpu" if args.offload else device,
    )
    if args.offload:
        offload_layers(model, device)
    return model.eval()
