"""CogView's three-region sparse attention: text + sampled image pivots, plus a local causal window.

Every query attends to three regions of the keys:

(a) all text positions and (b) a random sample of image positions, together ``num_pivot`` "pivot" keys per
sample, visible only when they lie in blocks strictly before the query's window; and (c) a causal local window
made of the query's own block of ``query_window`` positions and the ``key_window_times - 1`` blocks before it.
Pivot scores get ``+ log(s // num_pivot)`` to compensate for the subsampling, and one softmax is taken jointly
over the pivot and window scores. Memory is O(s · (num_pivot + key_window_times · query_window)), never O(s²).

``is_sparse == 1`` (training) uses :func:`sample_pivot_indices` + :func:`sparse_attention`;
``is_sparse == 2`` (incremental inference) uses :func:`sparse_attention_inference`.
Masked scores follow the original's ``scores * mask - 10000 * (1 - mask)`` convention, and the softmax is
computed in fp32 whatever the input dtype.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import InputError

MASKED_SCORE = -10000.0


class SparseAttentionConfigError(InputError):
    """A sparse-attention setting or input that cannot work; the message names the offending value."""


def sample_pivot_indices(
    txt_indices_bool: Tensor,
    img_indices_bool: Tensor,
    num_pivot: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick each sample's pivot keys: all its text positions, topped up with random image positions.

    ``txt_indices_bool`` and ``img_indices_bool`` are ``[b, s]`` masks of text positions (token >= number of
    image tokens and loss_mask > 0) and image positions. Image positions are drawn without replacement so that
    every sample has exactly ``num_pivot`` pivots. The draw uses ``generator`` (or torch's global CPU RNG,
    which activation checkpointing restores, so a recomputed forward sees the same pivots).
    Returns ``[b, num_pivot]`` long key positions on the masks' device: text positions first (ascending), then
    the sampled image positions.
    """
    if txt_indices_bool.dim() != 2 or txt_indices_bool.shape != img_indices_bool.shape:
        raise SparseAttentionConfigError(
            f"txt_indices_bool {tuple(txt_indices_bool.shape)} and img_indices_bool "
            f"{tuple(img_indices_bool.shape)} must both have the shape [batch, seq_len]."
        )
    draw_device = generator.device if generator is not None else torch.device("cpu")
    rows = []
    for sample, (txt, img) in enumerate(zip(txt_indices_bool.cpu(), img_indices_bool.cpu(), strict=True)):
        txt_pos = txt.nonzero().squeeze(1)  # [n_txt]
        img_pos = img.nonzero().squeeze(1)  # [n_img]
        num_img = num_pivot - len(txt_pos)
        if num_img < 0:
            raise SparseAttentionConfigError(
                f"sample {sample} has {len(txt_pos)} text positions, more than num_pivot={num_pivot}; "
                "raise --num-pivot or shorten the text."
            )
        if num_img > len(img_pos):
            raise SparseAttentionConfigError(
                f"sample {sample} has {len(txt_pos)} text and {len(img_pos)} image positions, "
                f"too few to pick num_pivot={num_pivot} pivots."
            )
        chosen = torch.randperm(len(img_pos), generator=generator, device=draw_device)[:num_img].cpu()
        rows.append(torch.cat((txt_pos, img_pos[chosen])))
    return torch.stack(rows).to(txt_indices_bool.device)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pivot_idx: Tensor,
    query_window: int,
    key_window_times: int,
    dropout: Callable[[Tensor], Tensor],
) -> Tensor:
    """Training-time sparse attention: ``[b, n, s, d]`` Q/K/V (Q not pre-scaled) to ``[b, n, s, d]`` context.

    ``pivot_idx`` ``[b, num_pivot]`` holds the pivot key positions (see :func:`sample_pivot_indices`). With
    ``w = query_window`` and ``t = key_window_times``, query i (block ``i // w``) sees
    * pivot key j only if ``j // w <= i // w - t`` (strictly before its window), scored + log(s // num_pivot);
    * window key j if ``i // w - t < j // w`` and ``j <= i`` (its own block and the t - 1 before, causal).
    The window is read through an overlapping-chunk view of the front-padded K/V, so nothing [s, s] is built.
    ``dropout`` is applied to the joint attention probabilities (run it inside the model-parallel RNG fork).
    """
    b, n, s, d = q.shape
    num_pivot = pivot_idx.shape[1]
    w, t = query_window, key_window_times
    if s % w != 0:
        raise SparseAttentionConfigError(
            f"sequence length {s} is not a multiple of query_window={w}; sparse training needs "
            "(max_position_embeddings - 1) % query_window == 0."
        )
    if not 0 < num_pivot <= s:
        raise SparseAttentionConfigError(
            f"pivot_idx has {num_pivot} pivots per sample; it needs between 1 and the sequence length {s}."
        )
    assert pivot_idx.shape[0] == b and k.shape == q.shape == v.shape, (
        "q, k, v and pivot_idx disagree in shape"
    )
    num_blocks = s // w
    q = q * (1.0 / math.sqrt(d))

    # (a) + (b) pivots: gathered keys, visible strictly before the query's window.
    gather_idx = pivot_idx[:, None, :, None].expand(b, n, num_pivot, d)  # [b, n, P, d]
    k_pivot, v_pivot = k.gather(2, gather_idx), v.gather(2, gather_idx)  # [b, n, P, d]
    query_block = torch.arange(s, device=q.device) // w  # [s]
    pivot_visible = pivot_idx[:, None, :] // w <= query_block[None, :, None] - t  # [b, s, P]
    pivot_scores = _mask_scores(q @ k_pivot.transpose(-1, -2), pivot_visible[:, None])  # [b, n, s, P]
    pivot_scores = pivot_scores + math.log(s // num_pivot)

    # (c) window: block g sees the padded keys [g*w - (t-1)*w, g*w + w), i.e. chunk g of the unfolded view.
    pad = (t - 1) * w
    k_window = F.pad(k, (0, 0, pad, 0)).unfold(2, t * w, w)  # [b, n, g, d, t*w]
    v_window = F.pad(v, (0, 0, pad, 0)).unfold(2, t * w, w).transpose(-1, -2)  # [b, n, g, t*w, d]
    window_scores = _mask_scores(
        q.reshape(b, n, num_blocks, w, d) @ k_window, _window_visibility(num_blocks, w, t, q.device)
    )  # [b, n, g, w, t*w]

    scores = torch.cat((pivot_scores.view(b, n, num_blocks, w, num_pivot), window_scores), dim=-1)
    probs = dropout(scores.softmax(dim=-1).to(v.dtype))  # [b, n, g, w, P + t*w]
    probs_pivot, probs_window = probs.split((num_pivot, t * w), dim=-1)
    context = probs_pivot.reshape(b, n, s, num_pivot) @ v_pivot  # [b, n, s, d]
    return context + (probs_window @ v_window).view(b, n, s, d)


def sparse_attention_inference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    txt_indices_bool: Tensor,
    img_indices_bool: Tensor,
    query_window: int,
    key_window_times: int,
    num_pivot: int,
    max_sequence_length: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Inference-time sparse attention: the last ``sq`` of ``sk`` positions attend; returns ``[b, n, sq, d]``.

    ``q`` is ``[b, n, sq, d]`` (not pre-scaled), ``k``/``v`` are ``[b, n, sk, d]`` (every key so far) and the
    bool masks are ``[b, sk]``. With ``left = max(0, sk - key_window_times * query_window)``, the keys are
    * a window: every position in ``[left, sk)``;
    * pivots before ``left``: each sample's text positions, topped up with random image positions to
      ``max_text + int((left - max_text) * num_pivot / max_sequence_length)`` per sample, where max_text is
      the batch's largest text count before ``left`` (the original's formula; there is no log-bias here).
    One softmax is taken over the gathered keys. Causality inside the query is enforced by absolute position
    (key position <= query position), which matters when sq > 1. The original masked a slice view of the
    scores in place, which did not reliably reach the scores, so its multi-token queries could see later
    positions; this is fixed here, and the positional mask also hides pivots lying after early queries
    when sq exceeds the window.
    """
    b, n, sq, d = q.shape
    sk = k.shape[2]
    if txt_indices_bool.shape != (b, sk):
        raise SparseAttentionConfigError(
            f"txt_indices_bool has shape {tuple(txt_indices_bool.shape)} but the keys need [{b}, {sk}]."
        )
    if max_sequence_length <= 0:
        raise SparseAttentionConfigError(f"max_sequence_length must be positive, got {max_sequence_length}.")
    assert sq <= sk and k.shape == v.shape == (b, n, sk, d), "q must be the last positions of k/v"
    left = max(0, sk - key_window_times * query_window)
    txt_before = txt_indices_bool[:, :left]  # [b, left]
    max_text = int(txt_before.sum(dim=1).max())
    pivot_count = max_text + int((left - max_text) * num_pivot / max_sequence_length)
    pivot_idx = sample_pivot_indices(txt_before, img_indices_bool[:, :left], pivot_count, generator)  # [b, P]
    window_idx = torch.arange(left, sk, device=q.device).expand(b, -1)  # [b, sk - left]
    key_idx = torch.cat((pivot_idx.to(q.device), window_idx), dim=1)  # [b, K]

    gather_idx = key_idx[:, None, :, None].expand(b, n, key_idx.shape[1], d)  # [b, n, K, d]
    k_sel, v_sel = k.gather(2, gather_idx), v.gather(2, gather_idx)  # [b, n, K, d]
    query_pos = torch.arange(sk - sq, sk, device=q.device)  # [sq]
    visible = key_idx[:, None, :] <= query_pos[None, :, None]  # [b, sq, K]
    scores = _mask_scores(
        (q * (1.0 / math.sqrt(d))) @ k_sel.transpose(-1, -2), visible[:, None]
    )  # [b, n, sq, K]
    return scores.softmax(dim=-1).to(v.dtype) @ v_sel


def _mask_scores(scores: Tensor, visible: Tensor) -> Tensor:
    """Apply the original's ``scores * mask - 10000 * (1 - mask)`` in fp32 (broadcasting ``visible``)."""
    mask = visible.to(torch.float32)
    return scores.float() * mask + MASKED_SCORE * (1.0 - mask)


def _window_visibility(num_blocks: int, w: int, t: int, device: torch.device) -> Tensor:
    """``[g, w, t*w]`` bool: row r of block g sees chunk column c iff the key is causal and not front padding.

    Column c of block g is key position ``g*w - (t-1)*w + c``; the query is ``g*w + r``.
    """
    pad = (t - 1) * w
    col = torch.arange(t * w, device=device)
    causal = col[None, :] <= torch.arange(w, device=device)[:, None] + pad  # [w, t*w]
    real = torch.arange(num_blocks, device=device)[:, None] * w - pad + col[None, :] >= 0  # [g, t*w]
    return causal[None] & real[:, None, :]
