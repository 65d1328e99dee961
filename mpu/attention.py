"""CogView self-attention, split by heads across the model-parallel group.

Masks are boolean "may attend" tensors broadcastable to ``[b, heads, sq, sk]``, or ``None`` for
the common case: every cached/memory key visible and causal inside the query block (queries are
aligned with the *last* ``sq`` keys). ``None`` lets the fused kernel skip the mask entirely.
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TransformerConfig
from .dropout import Dropout, dropout
from .initialize import get_model_parallel_world_size
from .kv_cache import LayerKVCache
from .layers import ColumnParallelLinear, InitMethod, RowParallelLinear
from .random import get_cuda_rng_tracker
from .sparse_attention import sparse_attention, sparse_attention_inference
from .utils import divide, split_tensor_along_last_dim

PB_RELAX_ALPHA = 32.0
# One decoding query over at least this many cached key elements runs as two matmuls (see
# ``_one_query_attention``); below it (the demo models' caches) SDPA's single call is the faster.
_ONE_QUERY_MATMUL_MIN_KEYS = 1 << 18
# Causal attention with dropout on the CPU runs this many queries at a time (see
# ``_causal_blocked_attention``).
_CAUSAL_QUERY_BLOCK = 256


def causal_mask(query_length: int, key_length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[sq, sk]`` bool: query i (the ``sk - sq + i``-th position) sees keys up to its own position."""
    offset = key_length - query_length
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(diagonal=offset)


def standard_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    visible: torch.Tensor | None,
    attention_dropout: nn.Module | None = None,
    pb_relax_alpha: float | None = None,
) -> torch.Tensor:
    """The released computation: ``softmax((Q / sqrt(d)) K^T * m - 10000 (1 - m)) V``.

    ``query`` ``[b, n, sq, d]``; ``key``/``value`` ``[b, n, sk, d]``; returns ``[b, n, sq, d]``.
    With ``pb_relax_alpha`` the scores follow the CogView paper's PB-relax (its section 2.4): divide Q by
    ``alpha sqrt(d)``, subtract the row max, multiply by alpha. Mathematically the same softmax; it keeps
    fp16 finite.
    """
    if visible is None:
        visible = causal_mask(query.size(-2), key.size(-2), query.device)
    mask = visible.to(query.dtype)
    scale = math.sqrt(query.size(-1)) * (pb_relax_alpha or 1.0)
    scores = torch.matmul(query / scale, key.transpose(-1, -2))
    scores = scores * mask - (10000.0 / (pb_relax_alpha or 1.0)) * (1.0 - mask)
    if pb_relax_alpha:
        scores = (scores - scores.amax(dim=-1, keepdim=True).detach()) * pb_relax_alpha
    probs = F.softmax(scores, dim=-1)
    if attention_dropout is not None:
        probs = attention_dropout(probs)
    return torch.matmul(probs, value)


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    visible: torch.Tensor | None,
    dropout_p: float,
) -> torch.Tensor:
    """The same attention through ``F.scaled_dot_product_attention`` (flash/memory-efficient kernels).

    Exact up to rounding: masked scores become -inf instead of -10000, and exp(-10000) is already 0
    in every floating-point format, so no visible probability changes. On the CPU, causal attention with
    dropout and one query over a large cache take their own paths (see the helpers below).
    """
    sq, sk = query.size(-2), key.size(-2)
    on_cpu = query.device.type == "cpu"
    if on_cpu and visible is None and dropout_p > 0.0:
        return _causal_blocked_attention(query, key, value, dropout_p)
    cpu_decoding = on_cpu and sq == 1 and dropout_p == 0.0
    if cpu_decoding and key.numel() >= _ONE_QUERY_MATMUL_MIN_KEYS:
        return _one_query_attention(query, key, value, visible)
    is_causal = False
    if visible is None:
        if sq == sk:
            is_causal = True
        elif sq > 1:
            visible = causal_mask(sq, sk, query.device)
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=visible,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=1.0 / math.sqrt(query.size(-1)),
    )


def _one_query_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor | None = None
) -> torch.Tensor:
    """One decoding step's attention over the ``visible`` cached keys (default all): two matmuls, a softmax.

    On the CPU this beats ``scaled_dot_product_attention`` at one query over a large cache: with 12 layers
    of 577 cached positions (batch 4, 12 heads of 64, 2 threads) 5.9 against 6.8 ms in fp32 and 4.4
    against 16.3 ms in bf16; over the demo models' small caches SDPA's one call wins.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * (1.0 / math.sqrt(query.size(-1)))
    if visible is not None:
        scores.masked_fill_(~visible, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def _causal_blocked_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout_p: float
) -> torch.Tensor:
    """Causal attention with dropout, ``_CAUSAL_QUERY_BLOCK`` queries at a time, each over the keys it sees.

    With dropout, ``scaled_dot_product_attention`` on the CPU falls back to its math path, which scores
    every query against every key and masks half of the products away. A block of queries here multiplies
    only the keys up to its last query (about 60% of the products at sequence 1088) and masks only its
    diagonal square; the probabilities go through :func:`mpu.dropout.dropout`. The same function as SDPA's
    up to rounding: masked scores are -inf in both.
    """
    sq, sk = query.size(-2), key.size(-2)
    offset = sk - sq  # memory keys, visible to every query
    query = query * (1.0 / math.sqrt(query.size(-1)))
    blocks = []
    for start in range(0, sq, _CAUSAL_QUERY_BLOCK):
        end = min(start + _CAUSAL_QUERY_BLOCK, sq)
        seen = offset + end
        scores = torch.matmul(query[:, :, start:end], key[:, :, :seen].transpose(-1, -2))  # [b, n, q, seen]
        hidden = ~causal_mask(end - start, end - start, query.device)
        scores[..., offset + start : seen].masked_fill_(hidden, float("-inf"))
        probs = dropout(torch.softmax(scores, dim=-1), dropout_p)
        blocks.append(torch.matmul(probs, value[:, :, :seen]))
    return torch.cat(blocks, dim=-2)


class GPT2ParallelSelfAttention(nn.Module):
    """Multi-head self-attention; rank r of p owns heads ``[r n/p, (r+1) n/p)``.

    ``query_key_value`` is column-parallel with stride 3 (local rows ``[Q_r; K_r; V_r]``) and ``dense``
    row-parallel, so the only communication is the all-reduce after ``dense``.
    """

    def __init__(
        self,
        config: TransformerConfig,
        init_method: InitMethod,
        output_layer_init_method: InitMethod | None = None,
    ):
        super().__init__()
        hidden_size, num_attention_heads = config.hidden_size, config.num_attention_heads
        world_size = get_model_parallel_world_size()
        self.config = config
        self.hidden_size_per_partition = divide(hidden_size, world_size)
        self.hidden_size_per_attention_head = divide(hidden_size, num_attention_heads)
        self.num_attention_heads_per_partition = divide(num_attention_heads, world_size)
        self.query_key_value = ColumnParallelLinear(
            hidden_size, 3 * hidden_size, stride=3, gather_output=False, init_method=init_method
        )
        self.attention_dropout = Dropout(config.attention_dropout_prob)
        self.dense = RowParallelLinear(
            hidden_size,
            hidden_size,
            input_is_parallel=True,
            init_method=output_layer_init_method or init_method,
        )
        self.output_dropout = Dropout(config.output_dropout_prob)

    def _split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        b, s, _ = tensor.shape  # [b, s, n*d] -> [b, n, s, d]
        return tensor.view(
            b, s, self.num_attention_heads_per_partition, self.hidden_size_per_attention_head
        ).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        visible: torch.Tensor | None,
        mem: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
        is_sparse: int = 0,
        pivot_idx: torch.Tensor | None = None,
        txt_indices_bool: torch.Tensor | None = None,
        img_indices_bool: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` ``[b, sq, h]`` (already normalised); ``mem`` ``[b, sm, h]`` normalised memory."""
        query_length = hidden_states.size(1)
        inputs = hidden_states if mem is None else torch.cat((mem, hidden_states), dim=1)
        mixed = self.query_key_value(inputs)  # [b, sm+sq, 3h/p]
        query, key, value = (self._split_heads(t) for t in split_tensor_along_last_dim(mixed, 3))
        query = query[:, :, -query_length:]
        if kv_cache is not None:
            key, value = kv_cache.append(key, value)

        dropout_p = self.attention_dropout.p if self.training else 0.0
        with get_cuda_rng_tracker().fork() if dropout_p > 0 else contextlib.nullcontext():
            if is_sparse == 1:
                context = sparse_attention(
                    query,
                    key,
                    value,
                    pivot_idx,
                    self.config.query_window,
                    self.config.key_window_times,
                    self.attention_dropout,
                )
            elif is_sparse == 2:
                context = sparse_attention_inference(
                    query,
                    key,
                    value,
                    txt_indices_bool,
                    img_indices_bool,
                    self.config.query_window,
                    self.config.key_window_times,
                    self.config.num_pivot,
                    self.config.max_sequence_length,
                )
            elif self.config.use_fused_attention and self.config.pb_relax_alpha is None:
                context = fused_attention(query, key, value, visible, dropout_p)
            else:
                dropout = self.attention_dropout if dropout_p > 0 else None
                context = standard_attention(query, key, value, visible, dropout, self.config.pb_relax_alpha)

        b = context.size(0)
        context = context.transpose(1, 2).reshape(b, query_length, self.hidden_size_per_partition)
        return self.output_dropout(self.dense(context))
