"""Assembling datasets into train/valid/test loaders.

Kept from the original:
  * several `--train-data` paths are concatenated; a path whose string contains `t2i` counts 4 times and one
    containing `i2t` 2 times (a sampling weight chosen by file name: rename a file to change its weight);
  * the concatenation is wrapped in `RandomMappingDataset`, 200 × longer, whose item i is a fixed
    pseudo-random sample, so a "sequential" pass is a deterministic shuffle with replacement;
  * loaders read sequentially through `DistributedBatchSampler` with the global batch
    (micro-batch × data-parallel size), which resumes mid-epoch via `start_iter`.
Fixed: the original split the *random mapping* into contiguous ranges, so valid and test drew from the same
underlying samples as train. Here each dataset's own indices are split into disjoint contiguous ranges first,
and each split gets its own random mapping over its own samples only.
"""

import argparse
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, SequentialSampler, Subset

import mpu
from common.errors import InputError
from data_utils.caption_dropout import CaptionDropout
from data_utils.datasets import get_dataset_by_type
from data_utils.samplers import DistributedBatchSampler
from data_utils.unified_tokenizer import UnifiedTokenizer, tokenizer_or_default

logger = logging.getLogger(__name__)

RANDOM_MAPPING_SCALE = 200


class RandomMappingDataset(Dataset):
    """`scale` × longer than `dataset`; item i is dataset[j] for a j fixed by i (the original's mapping).

    j comes from `random.Random(i)` seeding a numpy RandomState with 16 random 32-bit words, then
    `randint(len)`.
    """

    def __init__(self, dataset: Dataset, scale: int = RANDOM_MAPPING_SCALE):
        self.wrapped_data = dataset
        self.scale = scale

    def __len__(self) -> int:
        return len(self.wrapped_data) * self.scale

    def source_index(self, index: int) -> int:
        """Index into the wrapped dataset that item `index` maps to."""
        words = random.Random(index)
        seed = [words.randint(0, 2**32 - 1) for _ in range(16)]
        return int(np.random.RandomState(seed=seed).randint(len(self.wrapped_data)))

    def __getitem__(self, index: int):
        return self.wrapped_data[self.source_index(index)]


def dataset_weight(path: str | os.PathLike) -> int:
    """Times a training path is repeated in the mix: 4 if its string contains 't2i', 2 if 'i2t', else 1."""
    text = str(path)
    if "t2i" in text:
        return 4
    if "i2t" in text:
        return 2
    return 1


def get_split(args: argparse.Namespace) -> list[float]:
    """`--split` ('949,50,1' or '949/50/1') → normalised [train, valid, test] fractions.

    A sum below 1 gives the rest to the next part; missing parts are 0; valid/test are 0 when `--valid-data` /
    `--test-data` name their own files.
    """
    separator = "," if "," in args.split else "/"
    try:
        splits = [float(s) for s in args.split.split(separator)]
    except ValueError:
        raise InputError(f"--split {args.split!r} must be numbers separated by ',' or '/'.") from None
    if any(s < 0 for s in splits) or sum(splits) <= 0:
        raise InputError(f"--split {args.split!r} must be non-negative numbers with a positive sum.")
    if sum(splits) < 1:
        splits.append(1 - sum(splits))
    splits = [*splits, 0.0, 0.0][:3]
    if args.valid_data is not None:
        splits[1] = 0.0
    if args.test_data is not None:
        splits[2] = 0.0
    total = sum(splits)
    return [s / total for s in splits]


def should_split(split: Sequence[float]) -> bool:
    """Whether the fractions put data in more than one part."""
    return max(split) / sum(split) != 1.0


def split_ranges(num_samples: int, split: Sequence[float]) -> list[range]:
    """Disjoint contiguous ranges covering 0..num_samples-1 in proportion to `split`.

    Boundaries are the rounded cumulative fractions; a part with a non-zero fraction that would get no sample
    takes one from the largest part, while there are enough samples for that.
    """
    cumulative = np.cumsum(split) / sum(split)
    ends = [round(num_samples * c) for c in cumulative[:-1]] + [num_samples]
    sizes = np.diff([0, *ends])
    nonzero = [k for k, fraction in enumerate(split) if fraction > 0]
    if num_samples >= len(nonzero):
        for k in nonzero:
            if sizes[k] == 0:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[k] = 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [range(int(s), int(s + n)) for s, n in zip(starts, sizes, strict=True)]


def make_dataset(
    dataset_type: str,
    path: Sequence[str | os.PathLike],
    split: Sequence[float] | None,
    args: argparse.Namespace,
    tokenizer: UnifiedTokenizer | None = None,
) -> Dataset | list[Dataset | None]:
    """Datasets of `path`, mixed by `dataset_weight` and randomly mapped; split into [train, valid, test].

    Returns one RandomMappingDataset when `split` is None or puts everything in one part, else a list of three
    (None for an empty part). The split happens per underlying dataset before any repetition or mapping, so
    no sample is shared between parts.
    """
    split = [1.0] if split is None else list(split)
    parts: list[list[Dataset]] = [[] for _ in split]
    for p in path:
        dataset = get_dataset_by_type(dataset_type, p, args, tokenizer)
        weight = dataset_weight(p)
        if weight > 1:
            logger.info("Enlarge %s %d times...", p, weight)
        for part, indices in zip(parts, split_ranges(len(dataset), split), strict=True):
            if len(indices):
                part.extend([Subset(dataset, indices)] * weight)
    mapped = [RandomMappingDataset(ConcatDataset(part)) if part else None for part in parts]
    return mapped if should_split(split) else mapped[int(np.argmax(split))]


def make_data_loader(
    dataset: Dataset,
    batch_size: int,
    args: argparse.Namespace,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """Sequential loader over `dataset` in global batches of `batch_size`; this rank takes its slice.

    `rank` / `world_size` default to mpu's data-parallel rank and size (0 and 1 without model parallelism).
    The last partial batch is dropped when there is more than one rank, as in the original. The loader
    draws its worker seeds from its own generator, not the global one, so starting a pass does not move
    the training RNG (a resumed run draws the same dropout masks as an uninterrupted one).
    """
    rank = mpu.get_data_parallel_rank() if rank is None else rank
    world_size = mpu.get_data_parallel_world_size() if world_size is None else world_size
    batch_sampler = DistributedBatchSampler(
        SequentialSampler(dataset),
        batch_size,
        drop_last=world_size > 1,
        rank=rank,
        world_size=world_size,
        gradient_accumulation_steps=getattr(args, "gradient_accumulation_steps", None),
    )
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=args.num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(getattr(args, "seed", 0)),
    )


class Loaders(NamedTuple):
    """The train, valid and test loaders; None where there is no such data."""

    train: DataLoader | None
    valid: DataLoader | None
    test: DataLoader | None


def build_loaders(
    args: argparse.Namespace,
    tokenizer: UnifiedTokenizer | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Loaders:
    """Train, valid and test loaders from `--train-data` (split by `--split`), `--valid-data`, `--test-data`.

    Batch sizes are per rank (`--batch-size`, `--eval-batch-size`, default the batch size); the loaders
    use global batches of that × data-parallel size. With `--caption-dropout P` a fraction P of the
    training rows of the text2image layout lose their caption (`CaptionDropout`, for classifier-free
    guidance); validation and test rows never do. `args` is only read.
    """
    world_size = mpu.get_data_parallel_world_size() if world_size is None else world_size
    batch_size = args.batch_size * world_size
    eval_batch_size = (args.eval_batch_size or args.batch_size) * world_size
    split = get_split(args)
    train = valid = test = None
    if args.train_data is not None:
        train = make_dataset(args.dataset_type, args.train_data, split, args, tokenizer)
        if should_split(split):
            train, valid, test = train
        if train is not None and getattr(args, "caption_dropout", 0.0) > 0:
            train = CaptionDropout(
                train, args.caption_dropout, args.seed, tokenizer_or_default(tokenizer, args)
            )
    if valid is None and args.valid_data is not None:
        valid = make_dataset(args.dataset_type, args.valid_data, None, args, tokenizer)
    if test is None and args.test_data is not None:
        test = make_dataset(args.dataset_type, args.test_data, None, args, tokenizer)

    def loader(dataset: Dataset | None, size: int) -> DataLoader | None:
        return None if dataset is None else make_data_loader(dataset, size, args, rank, world_size)

    train_loader = loader(train, batch_size) if args.batch_size > 0 else None
    return Loaders(train_loader, loader(valid, eval_batch_size), loader(test, eval_batch_size))


def make_loaders(
    args: argparse.Namespace,
    tokenizer: UnifiedTokenizer | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Loaders:
    """The original's call form of :func:`build_loaders`: also sets `args.do_train`, `do_valid`, `do_test`.

    The original's training loop reads those flags; code of this repository uses `build_loaders`.
    """
    loaders = build_loaders(args, tokenizer, rank, world_size)
    args.do_train, args.do_valid, args.do_test = (loader is not None for loader in loaders)
    return loaders


def detect_new_datasets(
    args: argparse.Namespace, tokenizer: UnifiedTokenizer | None = None
) -> tuple[DataLoader | None, DataLoader | None, DataLoader | None] | None:
    """Look in `--new-dataset-path` for `*lmdb` / `*bin` entries not yet in `--train-data`.

    If there are any, add them to `args.train_data` and return rebuilt loaders, else None. Unfinished
    preprocessing outputs (`*.partial`) are not picked up.
    """
    if args.new_dataset_path is None:
        return None
    folder = Path(args.new_dataset_path)
    if not folder.is_dir():
        logger.warning("new_dataset_path %s does not exist; skipping detection.", folder)
        return None
    current = {os.path.abspath(p) for p in args.train_data or []}
    found = sorted(
        str(p)
        for p in folder.iterdir()
        if p.name.endswith(("lmdb", "bin")) and os.path.abspath(p) not in current
    )
    if not found:
        return None
    args.train_data = list(args.train_data or []) + found
    return make_loaders(args, tokenizer)
