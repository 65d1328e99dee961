"""Gradient-norm clipping that counts each parameter once across the model-parallel group."""

from collections.abc import Iterable

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group, get_model_parallel_rank, get_model_parallel_world_size


def clip_grad_norm(
    parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2
) -> float:
    """Scale gradients in place so their global norm is at most ``max_norm``; return the norm before.

    Partitioned parameters (``model_parallel=True``) contribute from every rank; replicated ones
    (LayerNorms, position embeddings, row-parallel biases) only from model-parallel rank 0.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    norm_type = float(norm_type)
    counted = [p for p in params if getattr(p, "model_parallel", False) or get_model_parallel_rank() == 0]
    device = params[0].grad.device if params else torch.device("cpu")
    if norm_type == float("inf"):
        local = max(
            (p.grad.detach().abs().max().float() for p in counted), default=torch.zeros((), device=device)
        )
        total = torch.as_tensor(local, dtype=torch.float32, device=device).clone()
        if get_model_parallel_world_size() > 1:
            dist.all_reduce(total, op=dist.ReduceOp.MAX, group=get_model_parallel_group())
        total_norm = total.item()
    else:
        total = torch.zeros((), dtype=torch.float32, device=device)
        for p in counted:
            total += p.grad.detach().float().norm(norm_type) ** norm_type
        if get_model_parallel_world_size() > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=get_model_parallel_group())
        total_norm = total.item() ** (1.0 / norm_type)
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1:
        for p in params:
            p.grad.detach().mul_(clip_coef)
    return total_norm
