"""``get_batch``: the original's inference batch of a context, with its causal mask and positions."""

import argparse

import torch


def get_batch(
    context_tokens: torch.Tensor, device: torch.device | str, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens ``[b, s]`` on ``device``, the causal mask ``[1, 1, s, s]`` and positions ``[b, s]`` (0..s-1).

    A 1-D context becomes one row. The mask is in half precision under ``args.fp16``, as the model's
    activations are. ``filling_sequence`` needs none of this (it keeps a key/value cache); it is kept for
    code written against the original's ``generation.get_batch``.
    """
    tokens = torch.as_tensor(context_tokens, dtype=torch.long, device=device)
    tokens = tokens.view(1, -1) if tokens.dim() == 1 else tokens.reshape(tokens.size(0), -1)
    length = tokens.size(1)
    mask = torch.ones(length, length, device=tokens.device).tril_().view(1, 1, length, length)
    if args.fp16:
        mask = mask.half()
    positions = torch.arange(length, device=tokens.device).expand_as(tokens)
    return tokens, mask, positions
