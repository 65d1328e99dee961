"""Sparse attention (reference §3.8) against brute-force dense references built element by element."""

import math

import pytest
import torch
import torch.nn.functional as F

from mpu.sparse_attention import (
    SparseAttentionConfigError,
    sample_pivot_indices,
    sparse_attention,
    sparse_attention_inference,
)

B, N, D = 2, 2, 8


def no_dropout(probs: torch.Tensor) -> torch.Tensor:
    return probs


def random_qkv(s: int, seed: int, dtype: torch.dtype = torch.float32, sq: int | None = None):
    """Q [B, N, sq, D], K/V [B, N, s, D], with Q made non-contiguous like a permuted projection output."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, sq or s, N, D, generator=gen).transpose(1, 2).to(dtype)
    k, v = (torch.randn(B, N, s, D, generator=gen).to(dtype) for _ in range(2))
    return q, k, v


def layout(s: int, text_lengths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """CogView-like [len(text_lengths), s] masks: position 0 is a command token (neither), then text, then
    padding (neither) up to position 12, a [BOI] at 12 (neither), and image tokens from 13 on."""
    txt = torch.zeros(len(text_lengths), s, dtype=torch.bool)
    img = torch.zeros_like(txt)
    for row, length in enumerate(text_lengths):
        txt[row, 1 : 1 + length] = True
        img[row, 13:] = True
    return txt, img


def dense_reference(q, k, v, pivot_idx, w: int, t: int) -> torch.Tensor:
    """Full [s, s] attention with the visibility decided key by key from the rules of §3.8."""
    b, _, s, d = q.shape
    bias = math.log(s // pivot_idx.shape[1])
    visible = torch.zeros(b, s, s, dtype=torch.bool)
    log_bias = torch.zeros(b, s, s, dtype=q.dtype)
    for row in range(b):
        pivots = set(pivot_idx[row].tolist())
        for i in range(s):
            for j in range(s):
                if i // w - t < j // w and j <= i:  # own block or the t - 1 before, causal
                    visible[row, i, j] = True
                elif j // w <= i // w - t and j in pivots:  # strictly before the window
                    visible[row, i, j] = True
                    log_bias[row, i, j] = bias
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + log_bias[:, None]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    return scores.softmax(dim=-1) @ v


def inference_reference(q, k, v, pivot_sets: list[set[int]], left: int) -> torch.Tensor:
    """[b, n, sq, d]: query i (position sk - sq + i) sees its pivots and the window [left, sk), causally."""
    b, _, sq, d = q.shape
    sk = k.shape[2]
    visible = torch.zeros(b, sq, sk, dtype=torch.bool)
    for row in range(b):
        for i in range(sq):
            for j in range(sk):
                visible[row, i, j] = (j in pivot_sets[row] or j >= left) and j <= sk - sq + i
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    return scores.masked_fill(~visible[:, None], float("-inf")).softmax(dim=-1) @ v


def grads(fn, q, k, v) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output of fn(q, k, v) and its gradients wrt q, k, v for a fixed random upstream gradient."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out = fn(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    (out * upstream).sum().backward()
    return out.detach(), [x.grad for x in leaves]


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("s", "w", "t", "num_pivot"),
    [(64, 16, 2, 16), (96, 16, 2, 16), (96, 16, 3, 24), (96, 8, 5, 30)],
)
def test_sparse_attention_matches_dense_reference_and_gradients(s, w, t, num_pivot):
    q, k, v = random_qkv(s, seed=s + w + t)
    txt, img = layout(s, (9, 4))
    pivot_idx = sample_pivot_indices(txt, img, num_pivot, torch.Generator().manual_seed(3))

    out, (gq, gk, gv) = grads(lambda q, k, v: sparse_attention(q, k, v, pivot_idx, w, t, no_dropout), q, k, v)
    ref, (rq, rk, rv) = grads(
        lambda q, k, v: dense_reference(q, k, v, pivot_idx, w, t), q.double(), k.double(), v.double()
    )
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)
    for got, want in ((gq, rq), (gk, rk), (gv, rv)):
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


def test_window_covering_everything_is_causal_attention():
    """t * w >= s: no key is ever before the window, so the pivots are all masked out."""
    s, w = 64, 16
    q, k, v = random_qkv(s, seed=1)
    pivot_idx = torch.stack([torch.randperm(s)[:16] for _ in range(B)])
    out = sparse_attention(q, k, v, pivot_idx, w, 4, no_dropout)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5
    )


def test_pivots_covering_every_position_is_causal_attention():
    """num_pivot = s (all positions, shuffled): pivots fill everything before the window; log(s // s) = 0."""
    s, w = 64, 16
    q, k, v = random_qkv(s, seed=2)
    pivot_idx = torch.stack([torch.randperm(s) for _ in range(B)])
    out = sparse_attention(q, k, v, pivot_idx, w, 2, no_dropout)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5
    )


def test_pivots_covering_every_earlier_block_is_causal_attention_plus_log_bias():
    """The pivots are exactly the keys any query can reach before its window (blocks 0-1 of 6, t=4), so the
    result is causal attention with + log(96 // 32) on the keys strictly before each query's window."""
    s, w, t = 96, 16, 4
    q, k, v = random_qkv(s, seed=3)
    pivot_idx = torch.stack([torch.randperm(2 * w) for _ in range(B)])
    block = torch.arange(s) // w
    bias = torch.where(block[None, :] <= block[:, None] - t, math.log(3), 0.0)  # [s, s]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    attn_mask = bias.masked_fill(~causal, float("-inf"))
    out = sparse_attention(q, k, v, pivot_idx, w, t, no_dropout)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), atol=1e-5, rtol=1e-5
    )
    no_bias = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (out - no_bias).abs().max() > 1e-2  # the log-bias really changes the result


def test_dropout_is_applied_to_the_attention_probabilities():
    s = 64
    q, k, v = random_qkv(s, seed=4)
    pivot_idx = sample_pivot_indices(*layout(s, (9, 4)), 16, torch.Generator().manual_seed(0))
    plain = sparse_attention(q, k, v, pivot_idx, 16, 2, no_dropout)
    torch.testing.assert_close(sparse_attention(q, k, v, pivot_idx, 16, 2, lambda p: 2 * p), 2 * plain)
    assert sparse_attention(q, k, v, pivot_idx, 16, 2, torch.zeros_like).abs().max() == 0


def test_memory_is_linear_in_sequence_length():
    """No tensor saved for backward is anywhere near [s, s]."""
    s, w, t, num_pivot = 2048, 64, 2, 64
    q, k, v = (torch.randn(1, 1, s, D, requires_grad=True) for _ in range(3))
    pivot_idx = torch.randperm(s)[:num_pivot][None]
    sizes: list[int] = []

    def record(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        sparse_attention(q, k, v, pivot_idx, w, t, no_dropout).sum().backward()
    assert max(sizes) <= s * (num_pivot + t * w) < s * s // 8


def test_sparse_attention_errors():
    q, k, v = random_qkv(72, seed=5)
    pivot_idx = torch.zeros(B, 8, dtype=torch.long)
    with pytest.raises(
        SparseAttentionConfigError, match="sequence length 72 is not a multiple of query_window=16"
    ):
        sparse_attention(q, k, v, pivot_idx, 16, 2, no_dropout)
    with pytest.raises(SparseAttentionConfigError, match="100 pivots per sample; it needs between 1"):
        sparse_attention(q, k, v, torch.zeros(B, 100, dtype=torch.long), 8, 2, no_dropout)


# ----------------------------------------------------------------------------- pivot sampling


def test_sample_pivot_indices_takes_all_text_and_distinct_image_positions():
    txt, img = layout(64, (9, 4, 0))
    pivots = sample_pivot_indices(txt, img, 16, torch.Generator().manual_seed(0))
    assert pivots.shape == (3, 16) and pivots.dtype == torch.long
    for row in range(3):
        text_pos = txt[row].nonzero().squeeze(1)
        image_pos = set(img[row].nonzero().squeeze(1).tolist())
        chosen = pivots[row].tolist()
        assert chosen[: len(text_pos)] == text_pos.tolist()  # every text position, first and in order
        assert len(set(chosen)) == 16  # no duplicates
        assert set(chosen[len(text_pos) :]) <= image_pos  # the rest only from the image set


def test_sample_pivot_indices_is_seeded_and_covers_the_image_set():
    txt, img = layout(64, (9, 4))

    def draw(seed: int) -> torch.Tensor:
        return sample_pivot_indices(txt, img, 16, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(11), draw(11))
    assert not torch.equal(draw(11), draw(12))
    torch.manual_seed(
        5
    )  # the global CPU RNG (restored by activation checkpointing) is used without a generator
    first = sample_pivot_indices(txt, img, 16)
    torch.manual_seed(5)
    assert torch.equal(first, sample_pivot_indices(txt, img, 16))

    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(100):
        seen |= set(sample_pivot_indices(txt, img, 16, gen)[1].tolist())
    assert seen == set((txt[1] | img[1]).nonzero().squeeze(1).tolist())


def test_sample_pivot_indices_errors():
    txt, img = layout(20, (9, 4))
    with pytest.raises(
        SparseAttentionConfigError, match="sample 0 has 9 text positions, more than num_pivot=8"
    ):
        sample_pivot_indices(txt, img, 8)
    with pytest.raises(
        SparseAttentionConfigError, match="sample 1 has 4 text and 7 image positions, too few"
    ):
        sample_pivot_indices(txt, img, 12)
    with pytest.raises(SparseAttentionConfigError, match=r"must both have the shape \[batch, seq_len\]"):
        sample_pivot_indices(txt, img[:, :10], 8)
    assert sample_pivot_indices(txt, img, 11).shape == (2, 11)  # sample 1: 4 text + all 7 images


# ----------------------------------------------------------------------------- inference


def forced_inference_layout(sk: int) -> tuple[torch.Tensor, torch.Tensor, list[set[int]]]:
    """Masks where, with w=16, t=2, num_pivot=16, max_sequence_length=96 (left = 64, max_text = 10, so
    10 + int(54 * 16 / 96) = 19 pivots), the image positions before 64 are exactly the ones needed: the
    pivot sets are fixed. The image pivots sit right before the window (55..63), after early queries when
    sq > 32."""
    txt = torch.zeros(B, sk, dtype=torch.bool)
    img = torch.zeros_like(txt)
    txt[0, 0:10], img[0, 55:64] = True, True  # 10 text + 9 image
    txt[1, 2:8], img[1, 51:64] = True, True  # 6 text + 13 image
    img[:, 64:] = True
    pivots = [set((txt[row, :64] | img[row, :64]).nonzero().squeeze(1).tolist()) for row in range(B)]
    return txt, img, pivots


@pytest.mark.parametrize("sq", [1, 5, 40])
def test_sparse_attention_inference_matches_reference(sq):
    sk = 96
    q, k, v = random_qkv(sk, seed=sq, sq=sq)
    txt, img, pivots = forced_inference_layout(sk)
    out = sparse_attention_inference(q, k, v, txt, img, 16, 2, 16, 96)
    ref = inference_reference(q.double(), k.double(), v.double(), pivots, left=64)
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)


def test_sparse_attention_inference_random_pivots_follow_the_count_formula():
    sk, sq, left = 96, 3, 64
    q, k, v = random_qkv(sk, seed=8, sq=sq)
    txt, img = layout(sk, (9, 4))
    count = 9 + int(
        (left - 9) * 24 / 96
    )  # max_text + int((left - max_text) * num_pivot / max_sequence_length)
    expected = sample_pivot_indices(txt[:, :left], img[:, :left], count, torch.Generator().manual_seed(4))
    pivots = [set(row.tolist()) for row in expected]
    out = sparse_attention_inference(q, k, v, txt, img, 16, 2, 24, 96, torch.Generator().manual_seed(4))
    ref = inference_reference(q.double(), k.double(), v.double(), pivots, left)
    torch.testing.assert_close(out, ref.float(), atol=1e-5, rtol=1e-5)


def test_sparse_attention_inference_short_context_is_causal_attention():
    sk = 32  # <= t * w: no pivots, the window is everything
    q, k, v = random_qkv(sk, seed=9)
    txt, img = layout(sk, (9, 4))
    out = sparse_attention_inference(q, k, v, txt, img, 16, 2, 16, 96)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5
    )


def test_sparse_attention_inference_errors():
    q, k, v = random_qkv(96, seed=10, sq=1)
    txt, img, _ = forced_inference_layout(96)
    img[1, 51] = False  # sample 1 now has 12 image positions before the window, one too few
    with pytest.raises(SparseAttentionConfigError, match="sample 1 has 6 text and 12 image positions"):
        sparse_attention_inference(q, k, v, txt, img, 16, 2, 16, 96)
    with pytest.raises(SparseAttentionConfigError, match=r"but the keys need \[2, 96\]"):
        sparse_attention_inference(q, k, v, txt[:, :90], img[:, :90], 16, 2, 16, 96)


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite_and_close_to_fp32(dtype):
    s = 64
    q, k, v = random_qkv(s, seed=12)
    pivot_idx = sample_pivot_indices(*layout(s, (9, 4)), 16, torch.Generator().manual_seed(0))
    out = sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), pivot_idx, 16, 2, no_dropout)
    assert out.dtype == dtype and out.isfinite().all()
    torch.testing.assert_close(
        out.float(), sparse_attention(q, k, v, pivot_idx, 16, 2, no_dropout), atol=3e-2, rtol=0
    )

    txt, img, _ = forced_inference_layout(96)
    q, k, v = random_qkv(96, seed=13, sq=4)
    half = sparse_attention_inference(q.to(dtype), k.to(dtype), v.to(dtype), txt, img, 16, 2, 16, 96)
    assert half.dtype == dtype and half.isfinite().all()
    full = sparse_attention_inference(q, k, v, txt, img, 16, 2, 16, 96)
    torch.testing.assert_close(half.float(), full, atol=3e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    s = 96
    q, k, v = random_qkv(s, seed=14)
    txt, img = layout(s, (9, 4))
    gen = torch.Generator(device="cuda").manual_seed(0)
    pivot_idx = sample_pivot_indices(txt.cuda(), img.cuda(), 16, gen)
    assert pivot_idx.is_cuda
    out = sparse_attention(*(x.cuda().to(dtype) for x in (q, k, v)), pivot_idx, 16, 2, no_dropout)
    want = sparse_attention(q, k, v, pivot_idx.cpu(), 16, 2, no_dropout)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float().cpu(), want, atol=tol, rtol=tol)
