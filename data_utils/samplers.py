"""Data-parallel batch sampling with mid-epoch resume (the original's Megatron `DistributedBatchSampler`)."""

import itertools
from collections.abc import Iterable, Iterator

from torch.utils.data import BatchSampler


class DistributedBatchSampler(BatchSampler):
    """Global batches of `batch_size` indices from `sampler`; data-parallel rank r gets its slice of each.

    `batch_size` is the global batch (micro-batch × data-parallel world size). Rank r of w takes the
    contiguous slice [r·n/w, (r+1)·n/w) of every global batch of n indices, so all ranks walk the same
    global batches in step and together see each index once. A last partial batch (kept unless `drop_last`)
    is sliced the same way.

    Resume: set `start_iter` to the training iteration to resume at. The next pass skips the
    `start_iter × gradient_accumulation_steps` global batches those iterations consumed (modulo one epoch),
    then `start_iter` goes back to 0 so later passes start at the beginning.
    """

    def __init__(
        self,
        sampler: Iterable[int],
        batch_size: int,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        gradient_accumulation_steps: int | None = None,
    ):
        super().__init__(sampler, batch_size, drop_last)
        if not 0 <= rank < world_size:
            raise ValueError(f"Data-parallel rank {rank} is outside world size {world_size}.")
        if batch_size % world_size:
            raise ValueError(
                f"Global batch size {batch_size} is not divisible by data-parallel size {world_size}."
            )
        self.rank = rank
        self.world_size = world_size
        self.gradient_accumulation_steps = gradient_accumulation_steps or 1
        self.start_iter = 0

    def _slice(self, batch: list[int]) -> list[int]:
        n = len(batch)
        return batch[self.rank * n // self.world_size : (self.rank + 1) * n // self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        skip = self.start_iter * self.gradient_accumulation_steps % max(len(self), 1)
        self.start_iter = 0
        indices = itertools.islice(iter(self.sampler), skip * self.batch_size, None)
        while batch := list(itertools.islice(indices, self.batch_size)):
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield self._slice(batch)
