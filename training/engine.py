"""Model, parameter groups, optimizer and learning-rate schedule, on DeepSpeed or plain torch + DDP.

With `--deepspeed` the model goes through `deepspeed.initialize(model=..., model_parameters=param_groups,
args=args, mpu=mpu, ...)` with the adapted JSON configuration (ZeRO 0/1/2, fp16, bf16, fp32,
accumulation, clipping). Without it, `torch.optim.AdamW` (the same decoupled weight decay as the
original's FusedAdam) and torch DDP over the data-parallel group; bf16 runs under autocast.
"""

import argparse
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mpu
from learning_rates import AnnealingLR
from model import GPT2Config, GPT2Model, gpt2_get_params_for_weight_decay_optimization
from model.partition import padded_vocab_size
from training import ds_config
from training.errors import TrainingSetupError


def set_vocab_sizes(args: argparse.Namespace, tokenizer: Any) -> None:
    """`args.vocab_size` (the padded embedding rows), `args.num_tokens` and `args.num_image_tokens`."""
    args.num_tokens = tokenizer.num_tokens
    args.num_image_tokens = tokenizer.num_image_tokens
    args.vocab_size = padded_vocab_size(
        tokenizer.num_tokens, mpu.get_model_parallel_world_size(), args.make_vocab_size_divisible_by
    )


def get_model(args: argparse.Namespace) -> nn.Module:
    """`GPT2Model` from the size arguments on `args.device`; wrapped in DDP when not using DeepSpeed.

    The memory length is 0: with the original's default of 2048 a training batch attended to the
    previous batch's hidden states, which both released training scripts avoided by passing 0.
    """
    config = GPT2Config.from_args(args, args.vocab_size, max_memory_length=0)
    model = GPT2Model(config).to(torch.device(args.device))
    if mpu.get_data_parallel_rank() == 0:
        count = sum(p.nelement() for p in model.parameters())
        print(
            f" > number of parameters on model parallel rank {mpu.get_model_parallel_rank()}: {count}",
            flush=True,
        )
    if args.deepspeed:
        return model
    return DistributedDataParallel(model, process_group=mpu.get_data_parallel_group())


def unwrap(model: nn.Module) -> GPT2Model:
    """The `GPT2Model` inside a DeepSpeed engine or DDP wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model


def get_param_groups(model: nn.Module) -> list[dict]:
    """LayerNorm parameters and all biases without weight decay, the rest (both embeddings too) with it."""
    groups = gpt2_get_params_for_weight_decay_optimization(unwrap(model))
    for group in groups:
        for param in group["params"]:
            if not hasattr(param, "model_parallel"):
                param.model_parallel = False
    return [group for group in groups if group["params"]]


def get_learning_rate_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> AnnealingLR:
    """`AnnealingLR` over `--lr-decay-iters` (default `--train-iters`), warmup a fraction `--warmup` of it."""
    num_iters = max(1, args.lr_decay_iters if args.lr_decay_iters is not None else args.train_iters)
    return AnnealingLR(
        optimizer,
        start_lr=args.lr,
        warmup_iter=args.warmup * num_iters,
        num_iters=num_iters,
        decay_style=args.lr_decay_style,
        last_iter=-1,
        decay_ratio=args.lr_decay_ratio,
    )


def deepspeed_config(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration for `deepspeed.initialize`: `--deepspeed_config` adapted, or one built from args."""
    if args.deepspeed_config:
        config = ds_config.read_config(args.deepspeed_config)
    else:
        config = {
            "train_micro_batch_size_per_gpu": args.batch_size,
            "gradient_clipping": args.clip_grad,
            "optimizer": {"type": "Adam", "params": {"lr": args.lr, "weight_decay": args.weight_decay}},
            "fp16": {"enabled": bool(args.fp16)},
        }
    device = torch.device(args.device)
    return ds_config.adapt_config(config, args, device, mpu.get_data_parallel_world_size())


def use_deepspeed_activation_checkpointing(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """`--deepspeed-activation-checkpointing`: swap mpu's checkpoint and RNG tracker for DeepSpeed's.

    As the original: DeepSpeed's checkpointing is configured from the config's `activation_checkpointing`
    section, its function and tracker replace mpu's wherever the transformer looks them up, and the
    model-parallel seed is set again through DeepSpeed so its tracker has the model-parallel stream. The
    swap lasts for the rest of the process (one training run per process, as the original).
    """
    import deepspeed

    deepspeed.checkpointing.configure(mpu, deepspeed_config=config, num_checkpoints=args.num_layers)
    mpu.checkpoint = mpu.transformer.checkpoint = deepspeed.checkpointing.checkpoint
    tracker = deepspeed.checkpointing.get_cuda_rng_tracker
    mpu.get_cuda_rng_tracker = mpu.attention.get_cuda_rng_tracker = tracker
    deepspeed.checkpointing.model_parallel_cuda_manual_seed(args.seed)


def skip_identity_allreduce(engine: Any) -> None:
    """Turn off the DeepSpeed engine's gradient all-reduce where it is the identity.

    At data-parallel size 1 DeepSpeed still flattens every gradient into buckets, all-reduces them over
    a group of one process and copies them back after each backward (about 0.3 s of a 15 s step for a
    130M-parameter model on 2 CPU cores). Only without ZeRO: ZeRO's optimizers (DeepSpeed's bf16 one too)
    also move the gradients into their own buffers in that call, so they keep it.
    """
    from deepspeed.runtime.base_optimizer import ZeROOptimizer

    if mpu.get_data_parallel_world_size() == 1 and not isinstance(engine.optimizer, ZeROOptimizer):
        engine.enable_backward_allreduce = False


def setup_model_and_optimizer(args: argparse.Namespace) -> tuple[nn.Module, Any, AnnealingLR]:
    """``(model, optimizer, lr_scheduler)``: the DeepSpeed engine and its optimizer, or DDP and AdamW."""
    if args.deepspeed:
        config = deepspeed_config(args)  # first: it settles fp16 / bf16 / fp32
        if args.deepspeed_activation_checkpointing:
            use_deepspeed_activation_checkpointing(args, config)
        model = get_model(args)
        import deepspeed

        model, optimizer, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=get_param_groups(model),
            args=ds_config.initialize_args(args),
            config=config,
            mpu=mpu,
            dist_init_required=False,
        )
        skip_identity_allreduce(model)
    else:
        if args.fp16:
            raise TrainingSetupError(
                "--fp16 training needs --deepspeed (its loss scaling); without DeepSpeed use --bf16 or fp32"
            )
        model = get_model(args)
        optimizer = torch.optim.AdamW(
            get_param_groups(model),
            lr=args.lr,
            weight_decay=args.weight_decay,
            **ds_config.TORCH_ADAMW_OPTIONS,
        )
    return model, optimizer, get_learning_rate_scheduler(optimizer, args)
