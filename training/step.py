"""One training iteration and the evaluation pass, for a DeepSpeed engine, DDP or a plain `GPT2Model`.

The forward never carries memories between batches (the memory length is 0 in training and
evaluation). An iteration whose reduced image + text loss is NaN or Inf skips backward and the
optimizer step and counts as skipped, as the original. On DeepSpeed the learning rate steps only at
the gradient-accumulation boundary and only when the step was applied (no fp16 overflow).
"""

import argparse
import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import mpu
from common.process_env import print_rank_0
from data_utils import get_tokenizer
from learning_rates import AnnealingLR
from training.batch import get_batch
from training.engine import unwrap
from training.input_noise import corrupt_block_inputs
from training.loss import LossParts, is_finite_loss, lm_loss, token_classes
from training.timing import timer_or_null


def is_deepspeed_engine(model: nn.Module) -> bool:
    """Whether `model` is a DeepSpeed engine (it owns backward and step)."""
    return hasattr(model, "is_gradient_accumulation_boundary")


def _autocast(model: nn.Module, args: argparse.Namespace):
    """bf16 autocast for the plain-torch path (DeepSpeed casts the module itself)."""
    if args.bf16 and not is_deepspeed_engine(model):
        return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _num_image_tokens(args: argparse.Namespace) -> int:
    value = getattr(args, "num_image_tokens", None)
    if value is None:
        value = get_tokenizer().num_image_tokens
    return value


def forward_step(
    data_iterator: Iterator | None, model: nn.Module, args: argparse.Namespace, timers: Any, mems: list
) -> tuple[torch.Tensor, list, torch.Tensor, torch.Tensor]:
    """The original's forward step: ``(loss, mems, img_loss, txt_loss)``; no mems are used or returned."""
    timer_or_null(timers, "batch generator").start()
    tokens, labels, loss_mask, attention_mask, position_ids = get_batch(data_iterator, args, timers)
    noise = getattr(args, "sr_input_noise", 0.0)
    if noise > 0 and model.training:  # training rows only; see training.input_noise
        noisy = corrupt_block_inputs(tokens, get_tokenizer()["[BOI2]"], _num_image_tokens(args), noise)
        if mpu.get_model_parallel_world_size() > 1:  # one set of inputs, whatever each rank's RNG drew
            noisy = mpu.broadcast_data(["tokens"], {"tokens": noisy}, torch.int64)["tokens"].to(tokens.device)
        tokens = noisy
    timer_or_null(timers, "batch generator").stop()
    txt, img = token_classes(tokens, loss_mask, _num_image_tokens(args))
    with _autocast(model, args):
        logits, *_ = model(tokens, position_ids, attention_mask, txt, img, args.is_sparse)
    parts = lm_loss(
        logits,
        labels,
        tokens,
        loss_mask,
        txt_loss_scale=args.txt_loss_scale,
        num_image_tokens=_num_image_tokens(args),
        num_tokens=getattr(args, "num_tokens", None),
        vocab_multiple=args.make_vocab_size_divisible_by,
    )
    return parts.loss, [], parts.img_loss, parts.txt_loss


def reduce_over_world(value: torch.Tensor) -> torch.Tensor:
    """The mean of a detached scalar over all processes (the original's logged lm loss)."""
    reduced = value.detach().clone().float().view(1)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(reduced)
        reduced /= dist.get_world_size()
    return reduced[0]


def _accumulation_steps(model: nn.Module, args: argparse.Namespace) -> int:
    if is_deepspeed_engine(model):
        return model.gradient_accumulation_steps()
    return args.gradient_accumulation_steps or 1


def train_step(
    data_iterator: Iterator | None,
    model: nn.Module,
    optimizer: Any,
    lr_scheduler: AnnealingLR,
    args: argparse.Namespace,
    timers: Any,
    mems: list,
) -> tuple[torch.Tensor, int, list, torch.Tensor, torch.Tensor]:
    """One iteration over all accumulation micro-batches: ``(lm_loss, skipped, mems, img_loss, txt_loss)``.

    `lm_loss`, `img_loss` and `txt_loss` are averaged over the micro-batches and all processes;
    `skipped` is 1 when the iteration was skipped (NaN/Inf loss, or an fp16 overflow).
    """
    deepspeed = is_deepspeed_engine(model)
    steps = _accumulation_steps(model, args)
    totals = torch.zeros(3)
    if not deepspeed:
        optimizer.zero_grad(set_to_none=True)
    for micro in range(steps):
        timer_or_null(timers, "forward").start()
        loss, mems, img_loss, txt_loss = forward_step(data_iterator, model, args, timers, mems)
        timer_or_null(timers, "forward").stop()
        if not is_finite_loss(LossParts(loss, img_loss, txt_loss)):
            print_rank_0("found NaN or Inf loss: skipping backward and the optimizer step of this iteration")
            if not deepspeed:
                optimizer.zero_grad(set_to_none=True)
            return img_loss + txt_loss, 1, [], img_loss, txt_loss
        timer_or_null(timers, "backward").start()
        if deepspeed:
            model.backward(loss)
        else:
            sync = micro == steps - 1 or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                (loss / steps).backward()
        timer_or_null(timers, "backward").stop()
        totals += torch.stack([reduce_over_world(loss), img_loss.float().cpu(), txt_loss.float().cpu()])
        timer_or_null(timers, "optimizer").start()
        skipped = _optimizer_step(model, optimizer, lr_scheduler, args, micro == steps - 1)
        timer_or_null(timers, "optimizer").stop()
    totals /= steps
    return totals[0], skipped, [], totals[1], totals[2]


def _optimizer_step(model: nn.Module, optimizer: Any, lr_scheduler: AnnealingLR, args, last: bool) -> int:
    """Step the engine (each micro-batch) or the plain optimizer (at the end); 1 if the step was skipped."""
    if is_deepspeed_engine(model):
        boundary = model.is_gradient_accumulation_boundary()
        model.step()
        if not boundary:
            return 0
        if model.was_step_applied():
            lr_scheduler.step()
            return 0
        return 1
    if not last:
        return 0
    if args.clip_grad > 0:
        mpu.clip_grad_norm(unwrap(model).parameters(), args.clip_grad)
    optimizer.step()
    lr_scheduler.step()
    return 0


def evaluate(
    data_iterator: Iterator | None,
    model: nn.Module,
    args: argparse.Namespace,
    timers: Any,
    verbose: bool = False,
) -> float:
    """The mean lm loss over `--eval-iters` batches, dense attention, no dropout, no gradients."""
    eval_args = copy.copy(args)
    eval_args.is_sparse = 0
    model.eval()
    total = torch.zeros(())
    try:
        with torch.no_grad():
            for iteration in range(args.eval_iters):
                if verbose and iteration % args.log_interval == 0:
                    print_rank_0(f"Evaluating iter {iteration}/{args.eval_iters}")
                loss, _, _, _ = forward_step(data_iterator, model, eval_args, timers, [])
                total += reduce_over_world(loss).cpu()
    finally:
        model.train()
    return float(total / max(args.eval_iters, 1))
