"""The training loop: iterations, logging, evaluation, saving, `--exit-interval`, new-dataset hot loading."""

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import mpu
from data_utils import detect_new_datasets
from data_utils.datasets import sequence_length
from learning_rates import AnnealingLR
from training import report
from training.checkpointing import TrainingProgress, save_checkpoint
from training.engine import unwrap
from training.step import evaluate, train_step

NEW_DATASET_CHECK_INTERVAL = 100  # iterations between looks into --new-dataset-path, as the original


def cycle(loader: DataLoader | None) -> Iterator | None:
    """Batches of `loader` forever: a new pass starts (from the beginning) when one ends."""
    if loader is None:
        return None

    def batches():
        while True:
            yield from loader

    return batches()


def set_data_position(loader: DataLoader | None, consumed_samples: int) -> None:
    """Make `loader`'s next pass skip the `consumed_samples` (global) samples a previous run read."""
    if loader is None or consumed_samples == 0:
        return
    sampler = loader.batch_sampler
    per_start_iter = sampler.batch_size * sampler.gradient_accumulation_steps
    if consumed_samples % per_start_iter:
        print(
            f"warning: {consumed_samples} consumed samples is not a whole number of steps of "
            f"{per_start_iter}; resuming at the step before",
            flush=True,
        )
    sampler.start_iter = consumed_samples // per_start_iter


@dataclass
class Loaders:
    """The three loaders and the iterators the loop reads from."""

    train: DataLoader | None
    valid: DataLoader | None
    test: DataLoader | None

    def __post_init__(self) -> None:
        self.train_iterator = cycle(self.train)
        self.valid_iterator = cycle(self.valid)

    def replace(self, train: DataLoader | None, valid: DataLoader | None, test: DataLoader | None) -> None:
        """Switch to rebuilt loaders (new datasets found); their passes start from the beginning."""
        self.train, self.valid, self.test = train, valid, test
        self.__post_init__()


def global_batch_size(args: argparse.Namespace, model: nn.Module) -> int:
    """Samples one iteration consumes over all data-parallel ranks and accumulation steps."""
    steps = model.gradient_accumulation_steps() if hasattr(model, "gradient_accumulation_steps") else None
    return (
        args.batch_size
        * mpu.get_data_parallel_world_size()
        * (steps or args.gradient_accumulation_steps or 1)
    )


def evaluate_and_print_results(
    prefix: str,
    data_iterator: Iterator | None,
    model: nn.Module,
    args: argparse.Namespace,
    timers: Any,
    recorder: report.Recorder,
    iteration: int | None = None,
) -> float:
    """Evaluate, print the original's validation line, record `valid_loss` / `valid_ppl`."""
    loss = evaluate(data_iterator, model, args, timers)
    recorder.line("-" * 100)
    recorder.line(report.validation_line(prefix, loss))
    recorder.line("-" * 100)
    if iteration is not None:
        recorder.scalars(
            iteration, {"valid_loss": loss, "valid_ppl": float(torch.tensor(min(20.0, loss)).exp())}
        )
    return loss


def _sequence_length(args: argparse.Namespace) -> int:
    return sequence_length(args) - 1  # the model reads all but the last token of a row


def train(
    model: nn.Module,
    optimizer: Any,
    lr_scheduler: AnnealingLR,
    loaders: Loaders,
    args: argparse.Namespace,
    timers: Any,
    progress: TrainingProgress,
    recorder: report.Recorder,
    tokenizer: Any,
) -> bool:
    """Train from `progress.iteration` to `--train-iters`; False when `--exit-interval` stopped it early."""
    model.train()
    batch = global_batch_size(args, model)
    tokens_per_iteration = batch * _sequence_length(args)
    flops_per_token = report.model_flops_per_token(
        sum(p.numel() for p in unwrap(model).parameters()) * mpu.get_model_parallel_world_size(),
        args.num_layers,
        args.hidden_size,
        _sequence_length(args),
    )
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    peak = report.measure_matmul_flops(torch.device(args.device), dtype) * torch.distributed.get_world_size()
    recorder.line(f" MFU is against this run's measured matmul rate: {peak / 1e9:.1f} GFLOP/s over all ranks")
    totals, logged, start = torch.zeros(3), 0, time.perf_counter()
    while progress.iteration < args.train_iters:
        if args.new_dataset_path and progress.iteration % NEW_DATASET_CHECK_INTERVAL == 0:
            rebuilt = detect_new_datasets(args, tokenizer)
            if rebuilt is not None:
                recorder.line(f" new datasets found; training data is now {args.train_data}")
                loaders.replace(*rebuilt)
        lm_loss, skipped, _, img_loss, txt_loss = train_step(
            loaders.train_iterator, model, optimizer, lr_scheduler, args, timers, []
        )
        progress.iteration += 1
        progress.skipped_iters += skipped
        progress.consumed_train_samples += batch
        if not skipped:
            totals += torch.tensor([float(lm_loss), float(img_loss), float(txt_loss)])
            logged += 1
        if progress.iteration % args.log_interval == 0:
            elapsed = time.perf_counter() - start
            ms = elapsed * 1000.0 / args.log_interval
            means = (totals / max(logged, 1)).tolist()
            tokens_per_second = tokens_per_iteration * args.log_interval / elapsed
            mfu = tokens_per_second * flops_per_token / peak
            lr = optimizer.param_groups[0]["lr"]
            recorder.line(
                report.iteration_line(
                    progress.iteration,
                    args.train_iters,
                    ms,
                    lr,
                    *means,
                    report.loss_scale(optimizer),
                    tokens_per_second,
                    mfu,
                )
            )
            recorder.scalars(
                progress.iteration,
                {
                    "lr": lr,
                    "train_loss": means[0],
                    "img_loss": means[1],
                    "txt_loss": means[2],
                    "elapsed_time": ms,
                    "tokens_per_second": tokens_per_second,
                    "mfu": mfu,
                    "skipped_iters": progress.skipped_iters,
                },
            )
            totals, logged, start = torch.zeros(3), 0, time.perf_counter()
        if args.save and args.save_interval and progress.iteration % args.save_interval == 0:
            save_checkpoint(progress.iteration, model, optimizer, lr_scheduler, args, progress)
        if args.eval_interval and progress.iteration % args.eval_interval == 0 and loaders.valid is not None:
            evaluate_and_print_results(
                f"iteration {progress.iteration}",
                loaders.valid_iterator,
                model,
                args,
                timers,
                recorder,
                progress.iteration,
            )
            progress.consumed_valid_samples += args.eval_iters * loaders.valid.batch_sampler.batch_size
        if args.exit_interval and progress.iteration % args.exit_interval == 0:
            recorder.line(f" exiting the program at iteration {progress.iteration} (--exit-interval)")
            return False
    return True
