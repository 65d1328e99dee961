"""Communication across the model-parallel group as autograd pairs.

Each op is a named forward/backward pair, so a parallel layer reads as "where the data goes":

======================================  ==================  ==================
op                                      forward             backward
======================================  ==================  ==================
``copy_to_model_parallel_region``       identity            all-reduce
``reduce_from_model_parallel_region``   all-reduce          identity
``scatter_to_model_parallel_region``    split last dim      all-gather
``gather_from_model_parallel_region``   all-gather          split last dim
======================================  ==================  ==================

All are identities when the model-parallel size is 1.
"""

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group, get_model_parallel_rank, get_model_parallel_world_size
from .utils import split_tensor_along_last_dim


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if get_model_parallel_world_size() == 1:
        return tensor
    tensor = tensor.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(tensor, group=get_model_parallel_group())
    return tensor


def _split_last_dim(tensor: torch.Tensor) -> torch.Tensor:
    world_size = get_model_parallel_world_size()
    if world_size == 1:
        return tensor
    return split_tensor_along_last_dim(tensor, world_size)[get_model_parallel_rank()].contiguous()


def _gather_last_dim(tensor: torch.Tensor) -> torch.Tensor:
    world_size = get_model_parallel_world_size()
    if world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor, group=get_model_parallel_group())
    return torch.cat(parts, dim=-1)


class _CopyToModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return input_

    @staticmethod
    def backward(ctx, grad_output):
        return _all_reduce(grad_output)


class _ReduceFromModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _all_reduce(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class _ScatterToModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _split_last_dim(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return _gather_last_dim(grad_output)


class _GatherFromModelParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input_):
        return _gather_last_dim(input_)

    @staticmethod
    def backward(ctx, grad_output):
        return _split_last_dim(grad_output)


def copy_to_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    """Enter a parallel region: identity forward, gradients summed over the group."""
    return input_ if get_model_parallel_world_size() == 1 else _CopyToModelParallelRegion.apply(input_)


def reduce_from_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    """Leave a parallel region by summing partial results over the group."""
    return input_ if get_model_parallel_world_size() == 1 else _ReduceFromModelParallelRegion.apply(input_)


def scatter_to_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    """Keep this rank's slice of the last dimension."""
    return input_ if get_model_parallel_world_size() == 1 else _ScatterToModelParallelRegion.apply(input_)


def gather_from_model_parallel_region(input_: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's slice of the last dimension."""
    return input_ if get_model_parallel_world_size() == 1 else _GatherFromModelParallelRegion.apply(input_)
