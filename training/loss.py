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


def mask_vocab_padding(logits: torch.Tensor, num_tokens: int | None) -> torch.Tensor:
    """Vocab-parallel logits ``[..., V/p]`` with the rows at or past `num_tokens` set to -inf.

    The vocabulary is padded to a multiple of 128 × the model-parallel size, so the number of padding
    rows depends on that size; leaving them in the softmax would make MP=2 and MP=1 losses differ.
    """
    if num_tokens is None:
        return logits
    per_partition = logits.size(-1)
    start = mpu.get_model_parallel_rank() * per_partition
    if start + per_partition <= num_tokens:
        return logits
    ids = torch.arange(start, start + per_partition, device=logits.device)
    return logits.masked_fill(ids >= num_tokens, float("-inf"))


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    txt_loss_scale: float,
    num_image_tokens: int,
    num_tokens: int | None = None,
) -> LossParts:
    """The weighted loss of vocab-parallel `logits` ``[b, s, V/p]``; labels, tokens, loss_mask ``[b, s]``.

    ``loss = Σ losses·m / Σ m`` with ``m = loss_mask`` times `txt_loss_scale` at text positions. The
    image and text parts are means over their positions (text divided by the scale), each all-reduced
    over the whole world and divided by its size, as the original logged them.
    """
    txt, img = token_classes(tokens, loss_mask, num_image_tokens)
    losses = mpu.vocab_parallel_cross_entropy(mask_vocab_padding(logits.float(), num_tokens), labels)
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
