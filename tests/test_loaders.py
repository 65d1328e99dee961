"""Dataset assembly and loaders: weighting, random mapping, leak-free splits, data-parallel slices, resume."""

import argparse
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import SequentialSampler

from data_utils.configure_data import (
    RandomMappingDataset,
    dataset_weight,
    detect_new_datasets,
    get_split,
    make_dataset,
    make_loaders,
    split_ranges,
)
from data_utils.dataset_writers import write_lmdb
from data_utils.samplers import DistributedBatchSampler
from data_utils.unified_tokenizer import UnifiedTokenizer

SEQ = 8


def write_tagged(path: Path, tag: int, count: int) -> Path:
    """An LMDB whose sample i is the row [tag, i], so every loaded sample names its origin."""
    write_lmdb(path, [np.array([tag, i], dtype=np.int64) for i in range(count)])
    return path


def make_args(tmp_path: Path, **overrides) -> argparse.Namespace:
    args = argparse.Namespace(
        train_data=None,
        valid_data=None,
        test_data=None,
        split="1000,1,1",
        dataset_type="TokenizedDataset",
        batch_size=2,
        eval_batch_size=None,
        num_workers=0,
        max_position_embeddings=SEQ,
        finetune=False,
        max_position_embeddings_finetune=-1,
        gradient_accumulation_steps=None,
        new_dataset_path=None,
    )
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def origins(dataset) -> set[tuple[int, int]]:
    """All (tag, index) pairs a mapped split can ever return, enumerated through its concatenation."""
    concat = dataset.wrapped_data
    return {tuple(concat[i]["text"][:2].tolist()) for i in range(len(concat))}


def test_dataset_weight() -> None:
    assert dataset_weight("data/ali_t2i.lmdb") == 4
    assert dataset_weight(Path("data/coco_i2t.lmdb")) == 2
    assert dataset_weight("data/t2i/anything.bin") == 4  # the whole path string counts, as in the original
    assert dataset_weight("data/bird_animal.bin") == 1


def test_get_split(tmp_path: Path) -> None:
    assert get_split(make_args(tmp_path, split="949,50,1")) == pytest.approx([0.949, 0.05, 0.001])
    assert get_split(make_args(tmp_path, split="0.8")) == pytest.approx([0.8, 0.2, 0.0])
    assert get_split(make_args(tmp_path, split="1/1")) == pytest.approx([0.5, 0.5, 0.0])
    assert get_split(make_args(tmp_path, split="8,1,1", valid_data=["v.lmdb"])) == pytest.approx(
        [8 / 9, 0, 1 / 9]
    )
    with pytest.raises(ValueError, match="--split 'a,b' must be numbers"):
        get_split(make_args(tmp_path, split="a,b"))


@pytest.mark.parametrize(
    ("n", "split"), [(10, [0.8, 0.1, 0.1]), (5, [0.998, 0.001, 0.001]), (1000, [0.949, 0.05, 0.001])]
)
def test_split_ranges_are_disjoint_and_cover(n: int, split: list[float]) -> None:
    ranges = split_ranges(n, split)
    assert sorted(i for r in ranges for i in r) == list(range(n))
    assert all(len(r) >= 1 for r in ranges)
    assert abs(len(ranges[0]) - split[0] * n) <= 2


def test_random_mapping_matches_the_original_formula(real_tokenizer: UnifiedTokenizer) -> None:
    mapped = RandomMappingDataset(list(range(37)))
    assert len(mapped) == 37 * 200
    # What the original's RandomMappingDataset returns for these indices (random.Random(i) seeding a
    # numpy RandomState with 16 words, then randint(37)), recorded once: a change of formula shows here.
    assert [mapped[index] for index in (0, 1, 5, 1234, 7399)] == [22, 29, 16, 28, 20]


def test_splits_never_share_a_sample(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    paths = [
        write_tagged(tmp_path / "a_t2i.lmdb", 1, 20),
        write_tagged(tmp_path / "b_i2t.lmdb", 2, 10),
        write_tagged(tmp_path / "c.lmdb", 3, 30),
    ]
    args = make_args(tmp_path)
    train, valid, test = make_dataset("TokenizedDataset", paths, [0.8, 0.1, 0.1], args, real_tokenizer)
    parts = [origins(d) for d in (train, valid, test)]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    everything = {(1, i) for i in range(20)} | {(2, i) for i in range(10)} | {(3, i) for i in range(30)}
    assert parts[0] | parts[1] | parts[2] == everything
    assert {tag for tag, _ in parts[1]} == {1, 2, 3}  # every dataset contributes to valid
    # Weights: t2i rows count 4 times, i2t 2 times, in the concatenation each split maps over.
    assert len(train.wrapped_data) == 4 * 16 + 2 * 8 + 24 and len(train) == 200 * (4 * 16 + 2 * 8 + 24)
    sampled = {tuple(valid[i]["text"][:2].tolist()) for i in range(0, len(valid), 7)}
    assert sampled <= parts[1]


def test_single_part_split_returns_one_dataset(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    path = write_tagged(tmp_path / "x.lmdb", 5, 4)
    dataset = make_dataset("TokenizedDataset", [path], None, make_args(tmp_path), real_tokenizer)
    assert isinstance(dataset, RandomMappingDataset) and origins(dataset) == {(5, i) for i in range(4)}


def test_distributed_batch_sampler_slices_and_resumes() -> None:
    sampler = SequentialSampler(range(20))
    ranks = [DistributedBatchSampler(sampler, 4, drop_last=True, rank=r, world_size=2) for r in range(2)]
    per_rank = [list(r) for r in ranks]
    assert per_rank[0][:2] == [[0, 1], [4, 5]] and per_rank[1][:2] == [[2, 3], [6, 7]]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == 5
    resumed = DistributedBatchSampler(
        sampler, 4, drop_last=True, rank=1, world_size=2, gradient_accumulation_steps=2
    )
    resumed.start_iter = 1  # one optimizer step = 2 global batches consumed
    assert list(resumed) == per_rank[1][2:]
    assert list(resumed) == per_rank[1]  # the next pass starts from the beginning
    resumed.start_iter = 3  # 6 batches: wraps within the epoch of 5
    assert list(resumed) == per_rank[1][1:]
    keep_last = DistributedBatchSampler(SequentialSampler(range(10)), 4, drop_last=False)
    assert list(keep_last) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="Global batch size 3 is not divisible by data-parallel size 2"):
        DistributedBatchSampler(sampler, 3, drop_last=True, rank=0, world_size=2)


def test_make_loaders(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    train_path = write_tagged(tmp_path / "train_t2i.lmdb", 1, 30)
    args = make_args(tmp_path, train_data=[str(train_path)], split="8,1,1", batch_size=3)
    train, valid, test = make_loaders(args, real_tokenizer)
    assert (args.do_train, args.do_valid, args.do_test) == (True, True, True)
    batch = next(iter(train))
    assert batch["text"].shape == (3, SEQ) and batch["loss_mask"].tolist() == [[1, 1] + [0] * (SEQ - 2)] * 3
    assert batch["text"][:, 2:].eq(real_tokenizer["[PAD]"]).all()
    # Rank 1 of 2 gets the second half of each global batch of 2 × 3.
    rank1, _, _ = make_loaders(args, real_tokenizer, rank=1, world_size=2)
    first_global = [train.dataset[i]["text"].tolist() for i in range(6)]
    assert next(iter(rank1))["text"].tolist() == first_global[3:]
    # Explicit validation data replaces the valid split.
    valid_path = write_tagged(tmp_path / "held_out.lmdb", 9, 5)
    args = make_args(tmp_path, train_data=[str(train_path)], valid_data=[str(valid_path)], split="1")
    train, valid, test = make_loaders(args, real_tokenizer)
    assert test is None and args.do_test is False
    assert {int(b["text"][0, 0]) for b, _ in zip(valid, range(5), strict=False)} == {9}


def test_resumed_loader_continues_mid_epoch(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    path = write_tagged(tmp_path / "d.lmdb", 1, 12)
    args = make_args(tmp_path, train_data=[str(path)], split="1", batch_size=4, num_workers=2)
    train, _, _ = make_loaders(args, real_tokenizer)
    full = [b["text"].tolist() for b, _ in zip(train, range(6), strict=False)]
    train.batch_sampler.start_iter = 4
    resumed = [b["text"].tolist() for b, _ in zip(train, range(2), strict=False)]
    assert resumed == full[4:6]


def test_detect_new_datasets(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    first = write_tagged(tmp_path / "first.lmdb", 1, 4)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    args = make_args(tmp_path, train_data=[str(first)], split="1", new_dataset_path=str(incoming))
    assert detect_new_datasets(args, real_tokenizer) is None
    write_tagged(incoming / "second.lmdb", 2, 4)
    (incoming / "third.lmdb.partial").mkdir()  # an unfinished preprocessing output is ignored
    train, _, _ = detect_new_datasets(args, real_tokenizer)
    assert args.train_data == [str(first), str(incoming / "second.lmdb")]
    assert origins(train.dataset) == {(t, i) for t in (1, 2) for i in range(4)}
