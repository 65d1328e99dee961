"""`pretrain_gpt2.py`'s main: set up, load, train, evaluate, save; bad input ends with one line."""

import argparse
import datetime
import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

from arguments import get_args
from common.errors import InputError
from common.timers import Timers
from data_utils import make_loaders
from generation.runtime import build_tokenizer
from training import report
from training.checkpointing import TrainingProgress, check_save_dir, load_checkpoint, save_checkpoint
from training.distributed import (
    initialize_distributed,
    launcher_env_restored,
    set_random_seed,
    shutdown_distributed,
    training_device,
)
from training.engine import set_vocab_sizes, setup_model_and_optimizer
from training.loop import Loaders, cycle, evaluate_and_print_results, set_data_position, train


def set_experiment_name(args: argparse.Namespace) -> None:
    """`--experiment-name` + `%m-%d-%H-%M` (the same on every rank), or `basename(--load)` when loading;
    `args.save` becomes `{save}/{experiment}` as the original."""
    if args.load:
        args.experiment_name = os.path.basename(os.path.normpath(args.load))
    else:
        stamp = [datetime.datetime.now().strftime("%m-%d-%H-%M")]
        if dist.is_initialized():
            dist.broadcast_object_list(stamp, src=0)
        args.experiment_name = args.experiment_name + stamp[0]
    if args.save:
        args.save = os.path.join(args.save, args.experiment_name)


def pretrain(args: argparse.Namespace) -> int:
    """Everything after argument parsing; returns the exit status."""
    torch.backends.cudnn.enabled = False
    device = training_device(args)
    args.device = str(device)
    initialize_distributed(args, device)
    set_experiment_name(args)
    if args.save:
        check_save_dir(args.save)
    set_random_seed(args.seed, device)
    tokenizer = build_tokenizer(args, device)  # built from these args, also installed process-wide
    set_vocab_sizes(args, tokenizer)
    train_loader, valid_loader, test_loader = make_loaders(args, tokenizer)
    model, optimizer, lr_scheduler = setup_model_and_optimizer(args)
    progress = load_checkpoint(model, optimizer, lr_scheduler, args) if args.load else TrainingProgress()
    set_data_position(train_loader, progress.consumed_train_samples)
    set_data_position(valid_loader, progress.consumed_valid_samples)
    loaders = Loaders(train_loader, valid_loader, test_loader)
    recorder = report.Recorder(args, progress.iteration)
    timers = Timers()
    try:
        finished = True
        if loaders.train is not None and args.train_iters > 0:
            finished = train(
                model, optimizer, lr_scheduler, loaders, args, timers, progress, recorder, tokenizer
            )
        if not finished:
            return 0
        if loaders.valid is not None:
            evaluate_and_print_results(
                "the end of training for val data", loaders.valid_iterator, model, args, timers, recorder
            )
        if args.save and progress.iteration != 0:
            save_checkpoint(progress.iteration, model, optimizer, lr_scheduler, args, progress)
        if loaders.test is not None:
            evaluate_and_print_results(
                "the end of training for test data", cycle(loaders.test), model, args, timers, recorder
            )
    finally:
        recorder.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the command line), train, and return the exit status (2 on bad input)."""
    args = get_args(argv)
    with launcher_env_restored():
        try:
            return pretrain(args)
        except InputError as error:  # bad data, checkpoint or configuration: one line, no traceback
            print(f"error: {error}", file=sys.stderr, flush=True)
            return 2
        finally:
            shutdown_distributed()
