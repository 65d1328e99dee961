"""Model-parallel and data-parallel process groups.

With ``world_size`` processes and model-parallel size ``p``, model-parallel groups are blocks of
*consecutive* ranks (``[0, 1], [2, 3], ...`` for p = 2) and data-parallel groups are *strided*
(``[0, 2, 4, ...], [1, 3, 5, ...]``), as in Megatron-LM and the original CogView.

Unlike the original, the getters also work when model parallelism was never initialised: they
then describe a single process (rank 0 of size 1, group ``None``), so the model runs on one CPU or
GPU without ``torch.distributed``. Every collective in ``mpu`` is a no-op at size 1.
"""

import torch.distributed as dist

_MODEL_PARALLEL_GROUP: dist.ProcessGroup | None = None
_DATA_PARALLEL_GROUP: dist.ProcessGroup | None = None
_MODEL_PARALLEL_RANKS: list[int] | None = None


def initialize_model_parallel(model_parallel_size_: int) -> None:
    """Create the model- and data-parallel groups; ``torch.distributed`` must be initialised first."""
    global _MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _MODEL_PARALLEL_RANKS
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed must be initialised before initialize_model_parallel")
    if _MODEL_PARALLEL_GROUP is not None:
        raise RuntimeError("model parallel groups are already initialised; call destroy_model_parallel first")
    world_size = dist.get_world_size()
    mp = min(model_parallel_size_, world_size)
    if world_size % mp != 0:
        raise ValueError(f"world size {world_size} is not divisible by model-parallel size {mp}")
    rank = dist.get_rank()
    # Every process must take part in creating every group, in the same order.
    for first in range(mp):
        ranks = list(range(first, world_size, mp))
        group = dist.new_group(ranks)
        if rank in ranks:
            _DATA_PARALLEL_GROUP = group
    for block in range(world_size // mp):
        ranks = list(range(block * mp, (block + 1) * mp))
        group = dist.new_group(ranks)
        if rank in ranks:
            _MODEL_PARALLEL_GROUP = group
            _MODEL_PARALLEL_RANKS = ranks


def model_parallel_is_initialized() -> bool:
    """Whether ``initialize_model_parallel`` has run in this process."""
    return _MODEL_PARALLEL_GROUP is not None and _DATA_PARALLEL_GROUP is not None


def get_model_parallel_group() -> dist.ProcessGroup | None:
    """The caller's model-parallel group (``None`` when running as a single process)."""
    return _MODEL_PARALLEL_GROUP


def get_data_parallel_group() -> dist.ProcessGroup | None:
    """The caller's data-parallel group (``None`` when running as a single process)."""
    return _DATA_PARALLEL_GROUP


def get_model_parallel_world_size() -> int:
    """Number of processes that share one copy of the model."""
    return dist.get_world_size(_MODEL_PARALLEL_GROUP) if _MODEL_PARALLEL_GROUP is not None else 1


def get_model_parallel_rank() -> int:
    """The caller's rank inside its model-parallel group."""
    return dist.get_rank(_MODEL_PARALLEL_GROUP) if _MODEL_PARALLEL_GROUP is not None else 0


def get_model_parallel_src_rank() -> int:
    """Global rank of the first process of the caller's model-parallel group."""
    return _MODEL_PARALLEL_RANKS[0] if _MODEL_PARALLEL_RANKS is not None else 0


def get_data_parallel_world_size() -> int:
    """Number of model replicas trained on different data."""
    return dist.get_world_size(_DATA_PARALLEL_GROUP) if _DATA_PARALLEL_GROUP is not None else 1


def get_data_parallel_rank() -> int:
    """The caller's rank inside its data-parallel group."""
    return dist.get_rank(_DATA_PARALLEL_GROUP) if _DATA_PARALLEL_GROUP is not None else 0


def destroy_model_parallel() -> None:
    """Forget the groups (the processes' ``torch.distributed`` state is left alone)."""
    global _MODEL_PARALLEL_GROUP, _DATA_PARALLEL_GROUP, _MODEL_PARALLEL_RANKS
    _MODEL_PARALLEL_GROUP = None
    _DATA_PARALLEL_GROUP = None
    _MODEL_PARALLEL_RANKS = None
