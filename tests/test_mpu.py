"""Each tensor-parallel piece at model-parallel size 2 (two gloo processes) equals the size-1 computation."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import mpu
from mpu import attention as attention_module
from mpu.transformer import visibility_from_mask
from tests.helpers.distributed import run_distributed

IN, OUT, VOCAB = 8, 12, 16


def _inputs():
    generator = torch.Generator().manual_seed(99)
    return {
        "x": torch.randn(3, 5, IN, generator=generator),
        "x_row": torch.randn(3, 5, OUT, generator=generator),
        "probe": torch.randn(3, 5, OUT, generator=generator),
        "probe_row": torch.randn(3, 5, IN, generator=generator),
        "ids": torch.randint(0, VOCAB, (3, 5), generator=generator),
        "logits": torch.randn(3, 5, VOCAB, generator=generator),
    }


def _run_layers(inputs):
    """Forward/backward of every parallel layer under whatever model-parallel size is current."""
    out = {}
    for stride in (1, 3):
        torch.manual_seed(1234)
        # With stride 3 the local outputs are [Q_r K_r V_r]; a gather would interleave them: keep them local.
        layer = mpu.ColumnParallelLinear(IN, OUT, stride=stride, gather_output=stride == 1)
        x = inputs["x"].clone().requires_grad_()
        y = layer(x)
        probe = (
            inputs["probe"]
            if stride == 1
            else _shard(
                inputs["probe"], -1, 3, mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()
            )
        )
        (y * probe).sum().backward()
        out[f"column{stride}"] = (y.detach(), x.grad, layer.weight.grad, layer.bias.grad)

    torch.manual_seed(1234)
    row = mpu.RowParallelLinear(OUT, IN, input_is_parallel=False)
    x = inputs["x_row"].clone().requires_grad_()
    y = row(x)
    (y * inputs["probe_row"]).sum().backward()
    out["row"] = (y.detach(), x.grad, row.weight.grad, row.bias.grad)

    torch.manual_seed(1234)
    embedding = mpu.VocabParallelEmbedding(VOCAB, IN)
    y = embedding(inputs["ids"])
    (y * inputs["x"]).sum().backward()
    out["embedding"] = (y.detach(), embedding.weight.grad)

    full_logits = inputs["logits"].clone().requires_grad_()
    local = mpu.scatter_to_model_parallel_region(full_logits)
    loss = mpu.vocab_parallel_cross_entropy(local, inputs["ids"])
    (loss * torch.arange(15.0).view(3, 5)).sum().backward()
    out["cross_entropy"] = (loss.detach(), full_logits.grad)
    return out


def _layers_at_mp2(rank, world_size):
    mpu.initialize_model_parallel(2)
    return _run_layers(_inputs())


@pytest.fixture(scope="module")
def layer_results():
    single = _run_layers(_inputs())
    parallel = run_distributed(_layers_at_mp2, 2)
    return single, parallel


def _shard(full: torch.Tensor, dim: int, stride: int, rank: int, world_size: int = 2) -> torch.Tensor:
    """Rank ``rank``'s slice: ``world_size * stride`` chunks along ``dim``, every world_size-th one."""
    chunks = torch.chunk(full, world_size * stride, dim=dim)
    return torch.cat(chunks[rank::world_size], dim=dim)


@pytest.mark.parametrize("stride", [1, 3])
def test_column_parallel_linear_matches_single_process(layer_results, stride):
    single, parallel = layer_results
    y, x_grad, w_grad, b_grad = single[f"column{stride}"]
    for rank, result in enumerate(parallel):
        py, px_grad, pw_grad, pb_grad = result[f"column{stride}"]
        torch.testing.assert_close(py, y if stride == 1 else _shard(y, -1, 3, rank), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(px_grad, x_grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pw_grad, _shard(w_grad, 0, stride, rank), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pb_grad, _shard(b_grad, 0, stride, rank), atol=1e-5, rtol=1e-5)


def test_row_parallel_linear_matches_single_process(layer_results):
    single, parallel = layer_results
    y, x_grad, w_grad, b_grad = single["row"]
    for rank, (py, px_grad, pw_grad, pb_grad) in enumerate(r["row"] for r in parallel):
        torch.testing.assert_close(py, y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(px_grad, x_grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pw_grad, _shard(w_grad, 1, 1, rank), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pb_grad, b_grad, atol=1e-5, rtol=1e-5)


def test_vocab_parallel_embedding_matches_single_process(layer_results):
    single, parallel = layer_results
    y, w_grad = single["embedding"]
    for rank, (py, pw_grad) in enumerate(r["embedding"] for r in parallel):
        torch.testing.assert_close(py, y, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(pw_grad, _shard(w_grad, 0, 1, rank), atol=1e-6, rtol=1e-6)


def test_vocab_parallel_cross_entropy_equals_torch_cross_entropy(layer_results):
    single, parallel = layer_results
    inputs = _inputs()
    logits = inputs["logits"].clone().requires_grad_()
    expected = F.cross_entropy(logits.view(-1, VOCAB), inputs["ids"].view(-1), reduction="none").view(3, 5)
    (expected * torch.arange(15.0).view(3, 5)).sum().backward()
    for loss, _ in [single["cross_entropy"]] + [r["cross_entropy"] for r in parallel]:
        torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single["cross_entropy"][1], logits.grad, atol=1e-6, rtol=1e-5)
    # At size 2 each rank's gradient covers its vocab half; the gather in scatter's backward restores it.
    for _, grad in (r["cross_entropy"] for r in parallel):
        torch.testing.assert_close(grad, logits.grad, atol=1e-6, rtol=1e-5)


def _groups(rank, world_size, mp):
    mpu.initialize_model_parallel(mp)
    tensor = torch.tensor([float(rank)])
    dist.all_reduce(tensor, group=mpu.get_data_parallel_group())
    return {
        "mp_rank": mpu.get_model_parallel_rank(),
        "mp_size": mpu.get_model_parallel_world_size(),
        "dp_rank": mpu.get_data_parallel_rank(),
        "dp_size": mpu.get_data_parallel_world_size(),
        "src": mpu.get_model_parallel_src_rank(),
        "dp_sum": tensor.item(),
    }


def test_groups_are_consecutive_for_model_and_strided_for_data():
    results = run_distributed(_groups, 4, 2)
    assert [r["mp_rank"] for r in results] == [0, 1, 0, 1]
    assert [r["dp_rank"] for r in results] == [0, 0, 1, 1]
    assert [r["src"] for r in results] == [0, 0, 2, 2]
    assert all(r["mp_size"] == 2 and r["dp_size"] == 2 for r in results)
    # data-parallel groups are [0, 2] and [1, 3]
    assert [r["dp_sum"] for r in results] == [2.0, 4.0, 2.0, 4.0]


def test_single_process_defaults_without_initialisation():
    assert not mpu.model_parallel_is_initialized()
    assert mpu.get_model_parallel_world_size() == 1 and mpu.get_model_parallel_rank() == 0
    assert mpu.get_data_parallel_world_size() == 1 and mpu.get_data_parallel_rank() == 0
    x = torch.randn(2, 3)
    assert mpu.copy_to_model_parallel_region(x) is x
    assert mpu.gather_from_model_parallel_region(x) is x


def _broadcast(rank, world_size):
    mpu.initialize_model_parallel(2)
    data = {"text": torch.arange(12).view(3, 4), "loss_mask": torch.ones(3, 4)} if rank == 0 else None
    return mpu.broadcast_data(["text", "loss_mask"], data, torch.int64)


def test_broadcast_data_copies_rank0_batch_to_the_group():
    for result in run_distributed(_broadcast, 2):
        assert torch.equal(result["text"], torch.arange(12).view(3, 4))
        assert torch.equal(result["loss_mask"], torch.ones(3, 4, dtype=torch.int64))


def test_clip_grad_norm_matches_torch_in_a_single_process():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    reference = [p.detach().clone().requires_grad_() for p in params]
    for p, r in zip(params, reference, strict=True):
        g = torch.randn_like(p)
        p.grad, r.grad = g.clone(), g.clone()
    norm = mpu.clip_grad_norm(params, 0.5)
    expected = torch.nn.utils.clip_grad_norm_(reference, 0.5)
    assert norm == pytest.approx(expected.item(), rel=1e-6)
    for p, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-5, atol=1e-6)


def test_rng_tracker_fork_is_reproducible_and_leaves_default_stream_alone():
    mpu.model_parallel_cuda_manual_seed(7, device_type="cpu")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with mpu.get_cuda_rng_tracker().fork():
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    mpu.model_parallel_cuda_manual_seed(7, device_type="cpu")
    with mpu.get_cuda_rng_tracker().fork():
        again = torch.rand(3)
    assert torch.equal(first, again)


def test_checkpoint_recomputes_dropout_identically():
    mpu.model_parallel_cuda_manual_seed(3, device_type="cpu")
    linear = torch.nn.Linear(6, 6)
    dropout = torch.nn.Dropout(0.5)

    def block(x):
        with mpu.get_cuda_rng_tracker().fork():
            x = dropout(linear(x))
        return dropout(x)

    x = torch.randn(4, 6, requires_grad=True)
    torch.manual_seed(11)
    state = mpu.get_cuda_rng_tracker().get_states()
    block(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    torch.manual_seed(11)
    mpu.get_cuda_rng_tracker().set_states(state)
    mpu.checkpoint(block, x).sum().backward()
    torch.testing.assert_close(x.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_query_attention_over_a_large_cache_equals_the_released_computation(dtype):
    """One decoding query over a cache big enough for the two-matmul path equals ``standard_attention``."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 8, 1, 64, generator=generator).to(dtype)
    key, value = (torch.randn(2, 8, 600, 64, generator=generator).to(dtype) for _ in range(2))
    assert key.numel() >= attention_module._ONE_QUERY_MATMUL_MIN_KEYS
    expected = mpu.standard_attention(query.float(), key.float(), value.float(), None)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    got = mpu.fused_attention(query, key, value, None, 0.0)
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)
    # a key mask per row (guidance's left-padded unconditional rows): the keys it hides take no part
    visible = torch.ones(2, 1, 1, 600, dtype=torch.bool)
    visible[1, ..., :37] = False
    masked = mpu.fused_attention(query, key, value, visible, 0.0)
    torch.testing.assert_close(masked[0], got[0], rtol=0, atol=0)
    alone = mpu.standard_attention(
        query[1:].float(), key[1:, :, 37:].float(), value[1:, :, 37:].float(), None
    )
    torch.testing.assert_close(masked[1:].float(), alone, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("memory", [0, 5])
def test_causal_blocked_attention_equals_the_released_computation(monkeypatch, memory):
    """Query blocks over the keys they see (blocks of 8 over 37 queries) equal ``standard_attention``."""
    monkeypatch.setattr(attention_module, "_CAUSAL_QUERY_BLOCK", 8)
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 3, 37, 16, generator=generator, requires_grad=True)
    key, value = (
        torch.randn(2, 3, 37 + memory, 16, generator=generator, requires_grad=True) for _ in range(2)
    )
    probe = torch.randn(2, 3, 37, 16, generator=generator)

    def values_and_gradients(attention):
        output = attention(query, key, value)
        grads = torch.autograd.grad((output * probe).sum(), (query, key, value))
        return output, *grads

    expected = values_and_gradients(lambda q, k, v: mpu.standard_attention(q, k, v, None))
    got = values_and_gradients(lambda q, k, v: attention_module._causal_blocked_attention(q, k, v, 0.0))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_causal_blocked_attention_drops_probabilities_out_without_bias(monkeypatch):
    """With dropout: one seed, one result; over many seeds the mean tends to the output without dropout."""
    monkeypatch.setattr(attention_module, "_CAUSAL_QUERY_BLOCK", 8)
    generator = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn(1, 2, 20, 8, generator=generator) for _ in range(3))
    torch.manual_seed(0)
    first = mpu.fused_attention(query, key, value, None, 0.5)
    torch.manual_seed(0)
    assert torch.equal(first, mpu.fused_attention(query, key, value, None, 0.5))
    clean = mpu.standard_attention(query, key, value, None)
    assert not torch.allclose(first, clean)
    mean = torch.stack([mpu.fused_attention(query, key, value, None, 0.5) for _ in range(2000)]).mean(0)
    torch.testing.assert_close(mean, clean, rtol=0, atol=0.1)


def test_a_causal_mask_tensor_becomes_the_maskless_causal_case():
    """The training batch's ``tril`` mask is recognised as causal; any other mask is kept."""
    tril = torch.ones(1, 1, 6, 6).tril_()
    assert visibility_from_mask(tril, 6, 0, torch.device("cpu")) is None
    with_memory = torch.ones(6, 9).tril_(diagonal=3)
    assert visibility_from_mask(with_memory, 6, 3, torch.device("cpu")) is None
    other = tril.clone()
    other[..., 4, 0] = 0
    visible = visibility_from_mask(other, 6, 0, torch.device("cpu"))
    assert torch.equal(visible, other > 0.5)


def test_cross_entropy_gradient_is_made_in_place_and_a_second_backward_refuses():
    logits = torch.randn(4, 9, 17, requires_grad=True)
    target = torch.randint(0, 17, (4, 9))
    loss = mpu.vocab_parallel_cross_entropy(logits, target).sum()
    loss.backward(retain_graph=True)
    expected = torch.autograd.grad(
        F.cross_entropy(logits.view(-1, 17), target.view(-1), reduction="sum"), logits
    )[0]
    torch.testing.assert_close(logits.grad, expected)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
