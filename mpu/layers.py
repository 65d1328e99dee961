"""Tensor-parallel layers (Megatron-style 1-D partitioning over the model-parallel group).

Every layer first initialises the *full* master weight with the default RNG and then keeps this
rank's slice, so a model built at model-parallel size p is exactly the size-1 model, split.
Partitioned parameters carry ``model_parallel = True``, which gradient clipping reads (their norm
contributes from every rank), and Megatron's ``partition_dim`` and ``partition_stride`` attributes for
code that expects them. Checkpoint resharding does not read these: it splits by key name
(``model/partition.py``).
"""

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn
from .initialize import get_model_parallel_rank, get_model_parallel_world_size
from .mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
    scatter_to_model_parallel_region,
)
from .utils import VocabUtility, divide

InitMethod = Callable[[torch.Tensor], torch.Tensor]


def linear(input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, computed on the CPU in the fastest of the ways that apply.

    Every linear layer of the model (the parallel layers and the tied output projection) multiplies here.
    In order: fp32 products of one to three rows on Intel CPUs, through ``F.linear`` (MKL streams the
    weights fastest there: ``onednn.mkl_streams_faster``); inside ``packed_linear_weights``, with the
    weight's reordered oneDNN copy; fp32 products big enough to gain, through oneDNN (``onednn``: MKL's
    SGEMM is slow on AMD CPUs); and for at most 16 rows (decoding a small model), as ``(W xᵀ)ᵀ``, which
    streams a small weight about twice as fast as ``F.linear`` (the demo models' 192-wide layers: ~16
    against ~35 µs a call at 4 rows). Same result up to float rounding.
    """
    if onednn.mkl_streams_faster(input_, weight):
        return F.linear(input_, weight, bias)
    packed = onednn.packed_copy(input_, weight)
    if packed is not None:
        return onednn.multiply_packed(input_, packed, bias)
    if onednn.handles(input_, weight):
        return onednn.linear(input_, weight, bias)
    rows = input_.numel() // input_.size(-1)
    if input_.device.type != "cpu" or rows > 16:
        return F.linear(input_, weight, bias)
    columns = input_.reshape(rows, input_.size(-1)).t()  # [in, rows]
    output = (
        torch.addmm(bias[:, None], weight, columns) if bias is not None else weight @ columns
    )  # [out, rows]
    return output.t().contiguous().view(*input_.shape[:-1], weight.size(0))


def packed_linear_weights(model: nn.Module) -> contextlib.AbstractContextManager[bool]:
    """Sample inside this: the model's parallel linear layers, and the output projection through the tied
    embedding, multiply with copies of their weights reordered for oneDNN, about twice as fast on the CPU at
    a few rows (``onednn.packed_weights``: only where the copies fit in memory; yields whether they were
    made). No effect on other devices.
    """
    layers = (ColumnParallelLinear, RowParallelLinear)
    return onednn.packed_weights(
        (m.weight for m in model.modules() if isinstance(m, layers)),
        sliced=(m.weight for m in model.modules() if isinstance(m, VocabParallelEmbedding)),
    )


def _mark_partitioned(param: torch.Tensor, partition_dim: int, stride: int) -> None:
    param.model_parallel = True
    param.partition_dim = partition_dim
    param.partition_stride = stride


def _initialize_affine_weight(
    weight: torch.Tensor,
    output_size: int,
    input_size: int,
    per_partition_size: int,
    partition_dim: int,
    init_method: InitMethod,
    stride: int = 1,
    return_master_weight: bool = False,
) -> torch.Tensor | None:
    """Initialise the full ``[output_size, input_size]`` matrix, then copy this rank's slice into ``weight``.

    The partition dimension is cut into ``world_size * stride`` chunks of ``per_partition_size / stride``;
    rank r takes chunks r, r + world_size, ... . With stride 3 on the fused QKV weight this gives rank r
    the rows ``[Q_r; K_r; V_r]``.
    """
    _mark_partitioned(weight, partition_dim, stride)
    world_size = get_model_parallel_world_size()
    if weight.is_meta:  # a model built to be loaded: no values to draw (and drawing on meta is slow)
        if not return_master_weight:
            return None
        return weight if world_size == 1 else weight.new_empty(output_size, input_size)
    if world_size == 1:
        init_method(weight)
        return weight if return_master_weight else None
    master = torch.empty(
        output_size, input_size, dtype=weight.dtype, device=weight.device, requires_grad=False
    )
    init_method(master)
    chunks = torch.split(master, divide(per_partition_size, stride), dim=partition_dim)
    mine = chunks[get_model_parallel_rank() :: world_size]
    with torch.no_grad():
        torch.cat(mine, dim=partition_dim, out=weight)
    return master if return_master_weight else None


class VocabParallelEmbedding(nn.Module):
    """Embedding whose vocabulary (rows) is split contiguously across the model-parallel group.

    Rank r owns rows ``[r V/p, (r+1) V/p)``; ids outside that range look up zeros, and the partial
    results are summed over the group.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, init_method: InitMethod = nn.init.xavier_normal_
    ):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        world_size = get_model_parallel_world_size()
        self.vocab_start_index, self.vocab_end_index = VocabUtility.vocab_range_from_global_vocab_size(
            num_embeddings, get_model_parallel_rank(), world_size
        )
        self.num_embeddings_per_partition = self.vocab_end_index - self.vocab_start_index
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim))
        _initialize_affine_weight(
            self.weight, num_embeddings, embedding_dim, self.num_embeddings_per_partition, 0, init_method
        )

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        if get_model_parallel_world_size() == 1:
            return F.embedding(input_, self.weight)
        outside = (input_ < self.vocab_start_index) | (input_ >= self.vocab_end_index)
        local_ids = (input_ - self.vocab_start_index).masked_fill(outside, 0)
        partial = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_model_parallel_region(partial)


class ColumnParallelLinear(nn.Module):
    """``Y = X A + b`` with A split by columns: ``A = [A_1 ... A_p]``, rank r computes ``X A_r + b_r``.

    In PyTorch's ``[out, in]`` layout the weight is split along dim 0. ``gather_output`` concatenates
    the partial outputs; otherwise each rank keeps its slice of the last dimension.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        gather_output: bool = True,
        init_method: InitMethod = nn.init.xavier_normal_,
        stride: int = 1,
        keep_master_weight_for_test: bool = False,
    ):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.gather_output = gather_output
        self.output_size_per_partition = divide(output_size, get_model_parallel_world_size())
        self.weight = nn.Parameter(torch.empty(self.output_size_per_partition, input_size))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.output_size_per_partition))
            _mark_partitioned(self.bias, 0, stride)
        else:
            self.register_parameter("bias", None)
        self.master_weight = _initialize_affine_weight(
            self.weight,
            output_size,
            input_size,
            self.output_size_per_partition,
            0,
            init_method,
            stride=stride,
            return_master_weight=keep_master_weight_for_test,
        )

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        output_parallel = linear(copy_to_model_parallel_region(input_), self.weight, self.bias)
        return gather_from_model_parallel_region(output_parallel) if self.gather_output else output_parallel


class RowParallelLinear(nn.Module):
    """``Y = X A + b`` with A split by rows and X by columns: ``Y = sum_r X_r A_r + b``.

    In PyTorch's ``[out, in]`` layout the weight is split along dim 1. The bias is replicated and
    added once, after the all-reduce.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        input_is_parallel: bool = False,
        init_method: InitMethod = nn.init.xavier_normal_,
        stride: int = 1,
        keep_master_weight_for_test: bool = False,
    ):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.input_is_parallel = input_is_parallel
        self.input_size_per_partition = divide(input_size, get_model_parallel_world_size())
        self.weight = nn.Parameter(torch.empty(output_size, self.input_size_per_partition))
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_size))
        else:
            self.register_parameter("bias", None)
        self.master_weight = _initialize_affine_weight(
            self.weight,
            output_size,
            input_size,
            self.input_size_per_partition,
            1,
            init_method,
            stride=stride,
            return_master_weight=keep_master_weight_for_test,
        )

    def forward(self, input_: torch.Tensor) -> torch.Tensor:
        input_parallel = input_ if self.input_is_parallel else scatter_to_model_parallel_region(input_)
        output = reduce_from_model_parallel_region(linear(input_parallel, self.weight))
        return output + self.bias if self.bias is not None else output
