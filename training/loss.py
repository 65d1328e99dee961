"""CogView's training loss: a weighted mean over image and text positions, plus the logged parts.

Positions are classified by their *input* token, as the released models were trained: an input id
below the image vocabulary is "image", any other position with a non-zero loss mask is "text" (so the
prediction of the first image code, whose input is `[BOI1]`, counts as text). Text positions are
weighted by `--txt-loss-scale` in the loss; the logged text loss is divided by it again ("unscaled").
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

import mpu
from model.partition import mask_model_parallel_padding


@dataclass(frozen=True)
class LossParts:
    """The loss to back-propagate and the detached image / unscaled text losses for logging."""

    loss: torch.Tensor
    img_loss: torch.Tensor
    txt_loss: torch.Tensor


def token_classes(tokens: torch.Tensor, loss_mask: torch.Tensor, num_image_tokens: int):
    """Boolean ``(txt, img)`` masks ``[b, s]`` of the input tokens, as the original classifies them."""
    img = tokens < num_image_tokens
    txt = ~img & (loss_mask > 0)
    return txt, img


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    txt_loss_scale: float,
    num_image_tokens: int,
    num_tokens: int | None = None,
    vocab_multiple: int = 128,
) -> LossParts:
    """The weighted loss of vocab-parallel `logits` ``[b, s, V/p]``; labels, tokens, loss_mask ``[b, s]``.

    ``loss = Σ losses·m / Σ m`` with ``m = loss_mask`` times `txt_loss_scale` at text positions. The
    image and text parts are means over their positions (text divided by the scale), each all-reduced
    over the whole world and divided by its size, as the original logged them. With `num_tokens`, the
    vocabulary rows that exist only because of model-parallel padding (`vocab_multiple` × MP size) are
    left out of the softmax, so the loss does not depend on the model-parallel size; the MP=1 padding
    rows stay, as in the original.
    """
    txt, img = token_classes(tokens, loss_mask, num_image_tokens)
    logits = logits.float()
    if num_tokens is not None:
        first_id = mpu.get_model_parallel_rank() * logits.size(-1)  # this shard's first vocabulary id
        logits = mask_model_parallel_padding(logits, num_tokens, vocab_multiple, first_id)
    losses = mpu.vocab_parallel_cross_entropy(logits, labels)
    mask = loss_mask.float().masked_fill(~txt, 0) * txt_loss_scale + loss_mask.float().masked_fill(txt, 0)
    weighted = losses * mask
    loss = weighted.sum() / mask.sum()
    with torch.no_grad():
        img_loss = weighted[img].sum() / max(int(img.sum()), 1)
        txt_loss = weighted[txt].sum() / max(int(txt.sum()), 1) / txt_loss_scale
        parts = torch.stack([img_loss, txt_loss])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(parts)
            parts /= dist.get_world_size()
    return LossParts(loss, parts[0], parts[1])


def is_finite_loss(parts: LossParts) -> bool:
    """False when the reduced image + text loss is NaN or Inf: the iteration is then skipped."""
    return bool(torch.isfinite(parts.img_loss + parts.txt_loss))
