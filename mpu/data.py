"""Broadcast a batch from the first rank of each model-parallel group to the others."""

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group, get_model_parallel_rank, get_model_parallel_src_rank

_MAX_DATA_DIM = 5


def _communication_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_data(
    keys: list[str], data: dict[str, torch.Tensor] | None, datatype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Return ``{key: tensor}`` equal on every rank of the model-parallel group.

    Only the group's first rank needs ``data``; it sends the shapes (at most 5 dimensions), then the
    values flattened into one tensor of ``datatype``. Tensors land on the communication device (CUDA
    under NCCL, the CPU under gloo or without ``torch.distributed``).
    """
    device = _communication_device()
    group = get_model_parallel_group()
    if group is None:
        return {key: data[key].to(device=device, dtype=datatype) for key in keys}

    is_source = get_model_parallel_rank() == 0
    sizes = torch.zeros(len(keys) * _MAX_DATA_DIM, dtype=torch.long, device=device)
    if is_source:
        for i, key in enumerate(keys):
            shape = data[key].shape
            if len(shape) > _MAX_DATA_DIM:
                raise ValueError(
                    f"broadcast_data supports at most {_MAX_DATA_DIM} dimensions; {key!r} has {len(shape)}"
                )
            sizes[i * _MAX_DATA_DIM : i * _MAX_DATA_DIM + len(shape)] = torch.tensor(shape)
    dist.broadcast(sizes, get_model_parallel_src_rank(), group=group)

    shapes = []
    for i in range(len(keys)):
        dims = [int(d) for d in sizes[i * _MAX_DATA_DIM : (i + 1) * _MAX_DATA_DIM] if d > 0]
        shapes.append(dims)
    numels = [int(torch.tensor(s).prod()) if s else 0 for s in shapes]

    if is_source:
        flat = torch.cat([data[key].to(device=device, dtype=datatype).reshape(-1) for key in keys])
    else:
        flat = torch.empty(sum(numels), dtype=datatype, device=device)
    dist.broadcast(flat, get_model_parallel_src_rank(), group=group)

    output, offset = {}, 0
    for key, shape, numel in zip(keys, shapes, numels, strict=True):
        output[key] = flat[offset : offset + numel].view(shape)
        offset += numel
    return output
