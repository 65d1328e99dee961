"""Training batches: tokens, labels and loss mask from a loader batch; the causal mask and position ids.

As the original: the batch is broadcast within the model-parallel group, `tokens = text[:, :-1]`,
`labels = text[:, 1:]`, the loss mask is shifted with the labels, the attention mask is a causal
`tril` ``[1, 1, s, s]`` (padding sits at the end, so it needs no mask), and positions are `arange(s)`,
except when finetuning with a sequence longer than the position table (super-resolution, 1345 tokens on
a 1089-row table): positions restart at 0 from each sample's first `[ROI2]` and are clamped to the table.
"""

import argparse
from collections.abc import Iterator
from typing import Any

import torch

import mpu
from common.errors import InputError
from data_utils import get_tokenizer
from data_utils.datasets import uses_finetune_positions
from training.timing import timer_or_null

BATCH_KEYS = ["text", "loss_mask"]


class BatchError(InputError):
    """A training batch that cannot be used (a sample without `[ROI2]`, an id outside the vocabulary)."""


def finetune_position_ids(data: torch.Tensor, roi2_id: int, max_positions: int) -> torch.Tensor:
    """Positions ``[b, s]`` that restart at 0 from each row's first `roi2_id`, clamped below `max_positions`.

    Every row must contain `roi2_id`; positions before it are 0..sep-1, from it on 0, 1, ...
    """
    batch_size, seq_length = data.shape
    is_roi2 = data == roi2_id
    missing = (~is_roi2.any(dim=1)).nonzero().flatten()
    if len(missing):
        raise BatchError(
            f"finetuning with a longer sequence needs [ROI2] (id {roi2_id}) in every sample; "
            f"batch row {int(missing[0])} has none"
        )
    sep = is_roi2.int().argmax(dim=1, keepdim=True)  # first [ROI2] per row, [b, 1]
    arange = torch.arange(seq_length, device=data.device).expand(batch_size, seq_length)
    positions = torch.where(arange < sep, arange, arange - sep)
    return positions.clamp_max(max_positions - 1)


def get_masks_and_position_ids(
    data: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    args: argparse.Namespace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original's helper: ``(attention_mask [1, 1, s, s], loss_mask [b, s], position_ids [b, s])``.

    Missing masks are made (causal; all ones). When `uses_finetune_positions(args)` (`--finetune` or
    `--finetune-positions` with a longer `--max-position-embeddings-finetune`), positions follow
    :func:`finetune_position_ids` with the process-wide tokenizer's `[ROI2]`.
    """
    batch_size, seq_length = data.shape
    if attention_mask is None:
        attention_mask = torch.ones(1, 1, seq_length, seq_length, device=data.device).tril_()
    if loss_mask is None:
        loss_mask = torch.ones_like(data)
    if args is not None and uses_finetune_positions(args):
        position_ids = finetune_position_ids(data, get_tokenizer()["[ROI2]"], args.max_position_embeddings)
    else:
        position_ids = torch.arange(seq_length, device=data.device).expand(batch_size, seq_length)
    return attention_mask, loss_mask, position_ids


def check_token_range(text: torch.Tensor, vocab_size: int) -> None:
    """One clear error for an id outside ``[0, vocab_size)`` (data made with another tokenizer)."""
    low, high = int(text.min()), int(text.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise BatchError(
            f"the training data holds token id {bad}, outside the vocabulary [0, {vocab_size}); "
            "was it tokenised with another tokenizer (--img-tokenizer-path, --text-tokenizer-path)?"
        )


def get_batch(
    data_iterator: Iterator[dict[str, Any]] | None, args: argparse.Namespace, timers: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next batch as ``(tokens, labels, loss_mask, attention_mask, position_ids)``.

    Only model-parallel rank 0 reads `data_iterator`; the others receive its batch. Under fp16 the
    attention mask is halved, as the original.
    """
    timer_or_null(timers, "data loader").start()
    data = next(data_iterator) if data_iterator is not None else None
    timer_or_null(timers, "data loader").stop()
    data_b = mpu.broadcast_data(BATCH_KEYS, data, torch.int64)
    device = torch.device(args.device) if getattr(args, "device", None) else data_b["text"].device
    text = data_b["text"].to(device)
    num_tokens = getattr(args, "num_tokens", None)
    if num_tokens is not None:
        check_token_range(text, num_tokens)
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    loss_mask = data_b["loss_mask"].to(device)[:, 1:].float()
    attention_mask, loss_mask, position_ids = get_masks_and_position_ids(tokens, loss_mask, None, args)
    if args.fp16:
        attention_mask = attention_mask.half()
    return tokens, labels, loss_mask, attention_mask, position_ids
