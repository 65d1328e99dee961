"""Cross entropy over logits whose vocabulary dimension is split across the model-parallel group."""

import torch
import torch.distributed as dist

from .initialize import get_model_parallel_group, get_model_parallel_rank, get_model_parallel_world_size
from .utils import VocabUtility


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> None:
    if get_model_parallel_world_size() > 1:
        dist.all_reduce(tensor, op=op, group=get_model_parallel_group())


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target):
        # Stable log-sum-exp over the whole vocabulary: global max, then summed exponentials.
        logits = vocab_parallel_logits.float()
        logits_max = logits.max(dim=-1)[0]
        _all_reduce(logits_max, dist.ReduceOp.MAX)
        logits = logits - logits_max.unsqueeze(-1)

        partition_vocab_size = logits.size(-1)
        start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(
            partition_vocab_size, get_model_parallel_rank(), get_model_parallel_world_size()
        )
        outside = (target < start) | (target >= end)
        local_target = (target - start).masked_fill(outside, 0)
        predicted_logits = torch.gather(logits, -1, local_target.unsqueeze(-1)).squeeze(-1)
        predicted_logits = predicted_logits.masked_fill(outside, 0.0)
        _all_reduce(predicted_logits, dist.ReduceOp.SUM)

        exp_logits = logits.exp_()
        sum_exp_logits = exp_logits.sum(dim=-1)
        _all_reduce(sum_exp_logits, dist.ReduceOp.SUM)
        loss = sum_exp_logits.log() - predicted_logits

        softmax = exp_logits.div_(sum_exp_logits.unsqueeze(-1))
        ctx.save_for_backward(softmax, outside, local_target)
        ctx.input_dtype = vocab_parallel_logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, outside, local_target = ctx.saved_tensors
        # The saved softmax becomes the gradient in place (no logits-sized copy: 0.4 s of a 16 s CPU
        # training step at vocabulary 58240); a second backward through the same graph then fails with
        # autograd's "modified by an inplace operation" error instead of computing a wrong gradient.
        grad_input = softmax
        one_hot = (~outside).to(grad_input.dtype).unsqueeze(-1)
        grad_input.scatter_add_(-1, local_target.unsqueeze(-1), -one_hot)
        grad_input.mul_(grad_output.unsqueeze(-1))
        return grad_input.to(ctx.input_dtype), None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy ``[...]`` of vocab-sharded logits ``[..., V/p]`` against global ids."""
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target)
