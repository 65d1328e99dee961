"""GPT2Model: released key layout, faithful numerics, KV cache and mems against full forwards."""

import pytest
import torch
import torch.nn.functional as F

import mpu
from model import GPT2Model, gpt2_get_params_for_weight_decay_optimization

VOCAB, HIDDEN, HEADS, LAYERS, SEQ = 320, 64, 4, 2, 64


def tiny_model(**overrides) -> GPT2Model:
    kwargs = dict(
        num_layers=LAYERS,
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=SEQ,
        max_memory_length=2048,
        checkpoint_activations=False,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return GPT2Model(**kwargs).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 24), generator=generator)
    return ids, torch.arange(24).expand(2, 24)


def expected_released_shapes(layers=48, hidden=2560, vocab=58240, positions=1089):
    shapes = {
        "word_embeddings.weight": (vocab, hidden),
        "transformer.position_embeddings.weight": (positions, hidden),
    }
    for i in range(layers):
        p = f"transformer.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "input_layernorm.bias": (hidden,),
            p + "attention.query_key_value.weight": (3 * hidden, hidden),
            p + "attention.query_key_value.bias": (3 * hidden,),
            p + "attention.dense.weight": (hidden, hidden),
            p + "attention.dense.bias": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.bias": (hidden,),
            p + "third_layernorm.weight": (hidden,),
            p + "third_layernorm.bias": (hidden,),
            p + "fourth_layernorm.weight": (hidden,),
            p + "fourth_layernorm.bias": (hidden,),
            p + "mlp.dense_h_to_4h.weight": (4 * hidden, hidden),
            p + "mlp.dense_h_to_4h.bias": (4 * hidden,),
            p + "mlp.dense_4h_to_h.weight": (hidden, 4 * hidden),
            p + "mlp.dense_4h_to_h.bias": (hidden,),
        }
    shapes |= {"transformer.final_layernorm.weight": (hidden,), "transformer.final_layernorm.bias": (hidden,)}
    return shapes


def test_released_4b_config_has_the_released_keys_shapes_and_size():
    with torch.device("meta"):
        big = GPT2Model(48, 58240, 2560, 40, 0.1, 0.1, 0.1, 1089, 2048, False)
    state = big.state_dict()
    expected = expected_released_shapes()
    assert list(state) == list(expected), "keys or their order differ from the released checkpoint"
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert len(state) == 772
    assert sum(p.numel() for p in big.parameters()) == 3_928_849_920


def test_kv_cache_decoding_equals_full_forward(model, batch):
    ids, positions = batch
    (full,) = model(ids, positions, 0)[:1]
    cache = model.new_kv_cache(capacity=8)  # deliberately small: the cache must grow
    pieces = [model.forward_cached(ids[:, :10], positions[:, :10], cache)]
    for t in range(10, ids.size(1)):
        pieces.append(model.forward_cached(ids[:, t : t + 1], positions[:, t : t + 1], cache))
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == ids.size(1)


def test_kv_cache_with_capacity_is_allocated_once_and_written_in_place(model, batch):
    ids, positions = batch
    cache = model.new_kv_cache(capacity=ids.size(1))  # what filling_sequence asks for: the whole sequence
    model.forward_cached(ids[:, :10], positions[:, :10], cache)
    buffers = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    for t in range(10, ids.size(1)):
        model.forward_cached(ids[:, t : t + 1], positions[:, t : t + 1], cache)
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers] == buffers
    assert all(layer.keys.size(2) == ids.size(1) for layer in cache.layers)


def test_kv_cache_vocab_range_returns_the_slice_of_full_logits(model, batch):
    ids, positions = batch
    full = model.forward_cached(ids, positions, model.new_kv_cache())
    sliced = model.forward_cached(ids, positions, model.new_kv_cache(), last_only=True, vocab_range=(16, 80))
    torch.testing.assert_close(sliced, full[:, -1:, 16:80], atol=1e-6, rtol=1e-6)


def test_kv_cache_chunks_and_batch_expansion(model, batch):
    ids, positions = batch
    one = ids[:1]
    (full,) = model(one.expand(3, -1), positions[:1].expand(3, -1), 0)[:1]
    cache = model.new_kv_cache()
    model.forward_cached(one[:, :7], positions[:1, :7], cache)
    cache.expand_batch(3)
    rest = model.forward_cached(one[:, 7:].expand(3, -1), positions[:1, 7:].expand(3, -1), cache)
    torch.testing.assert_close(rest, full[:, 7:], atol=1e-5, rtol=1e-5)


def test_mems_path_equals_full_forward(model, batch):
    ids, positions = batch
    full = model(ids, positions, 0)[0]
    logits, *mems = model(ids[:, :10], positions[:, :10], 0)
    assert len(mems) == LAYERS + 1 and mems[0].shape == (2, 10, HIDDEN)
    pieces = [logits]
    for start in range(10, 24, 5):
        logits, *mems = model(
            ids[:, start : start + 5], positions[:, start : start + 5], 0, None, None, 0, *mems
        )
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_mems_update_keeps_at_most_max_memory_length():
    model = tiny_model(max_memory_length=12)
    ids = torch.randint(0, VOCAB, (1, 20))
    positions = torch.arange(20).unsqueeze(0)
    _, *mems = model(ids[:, :8], positions[:, :8], 0)
    assert mems[0].size(1) == 8
    _, *new = model(ids[:, 8:15], positions[:, 8:15], 0, None, None, 0, *mems)
    assert new[0].size(1) == 12
    torch.testing.assert_close(new[0][:, :5], mems[0][:, 3:])


def test_sep_mask_equals_explicit_mask_tensor(model, batch):
    ids, positions = batch
    sep = 5
    mask = torch.ones(24, 24).tril()
    mask[:, :sep] = 1
    explicit = model(ids, positions, mask.view(1, 1, 24, 24))[0]
    torch.testing.assert_close(model(ids, positions, sep)[0], explicit, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(ids, positions, torch.tensor([sep]))[0], explicit, atol=1e-6, rtol=1e-6)


def test_wrong_mask_shape_is_a_clear_error(model, batch):
    ids, positions = batch
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 1, 5, 5\)"):
        model(ids, positions, torch.ones(1, 1, 5, 5))


@pytest.mark.parametrize("variant", [dict(use_fused_attention=False), dict(pb_relax_attention=True)])
def test_attention_variants_equal_fused_attention_in_fp32(model, batch, variant):
    other = tiny_model(**variant)
    other.load_state_dict(model.state_dict())
    ids, positions = batch
    torch.testing.assert_close(other(ids, positions, 3)[0], model(ids, positions, 3)[0], atol=2e-6, rtol=1e-5)


def test_pb_relax_layernorm_is_layernorm_with_scaled_epsilon():
    torch.manual_seed(0)
    norm = mpu.LayerNorm(16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(3, 5, 16) * 300
    c = x.abs().max() / 8
    expected = F.layer_norm(x, (16,), norm.weight, norm.bias, eps=1e-5 * c.item() ** 2)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.isnan(norm(torch.zeros(2, 16))).any()


def test_activation_checkpointing_gives_identical_gradients_with_dropout():
    def grads(checkpointing: bool):
        model = tiny_model(
            checkpoint_activations=checkpointing,
            attention_dropout_prob=0.2,
            output_dropout_prob=0.2,
            embedding_dropout_prob=0.2,
            max_memory_length=0,
        ).train()
        mpu.model_parallel_cuda_manual_seed(5, device_type="cpu")
        torch.manual_seed(5)
        ids = torch.randint(0, VOCAB, (2, 16))
        logits = model(ids[:, :-1], torch.arange(15).expand(2, 15), torch.ones(1, 1, 15, 15).tril())[0]
        mpu.vocab_parallel_cross_entropy(logits, ids[:, 1:]).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("is_sparse", [1, 2])
def test_sparse_attention_with_a_window_covering_the_sequence_is_dense(is_sparse):
    """query_window × key_window_times ≥ the sequence: every earlier key is in the window, so the sparse
    model (training with its sampled pivots, or incremental inference) gives the dense causal result."""
    dense = tiny_model(max_memory_length=0).train(is_sparse == 1)
    sparse = tiny_model(query_window=16, key_window_times=2, num_pivot=8, max_memory_length=0)
    sparse.load_state_dict(dense.state_dict())
    sparse.train(is_sparse == 1)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 200, (2, 33), generator=generator)
    ids[:, :4] = torch.randint(
        256, VOCAB, (2, 4), generator=generator
    )  # text tokens first, then image tokens
    tokens, positions, causal = ids[:, :-1], torch.arange(32).expand(2, 32), torch.ones(1, 1, 32, 32).tril()
    txt = tokens >= 256
    results = []
    for model, mode in ((dense, 0), (sparse, is_sparse)):
        logits = model(tokens, positions, causal, txt, ~txt, mode)[0]
        loss = mpu.vocab_parallel_cross_entropy(logits, ids[:, 1:]).mean()
        if model.training:
            loss.backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (dense_logits, dense_grads), (sparse_logits, sparse_grads) = results
    torch.testing.assert_close(sparse_logits, dense_logits, atol=1e-6, rtol=0)  # measured: 3e-7
    for name, grad in dense_grads.items():
        if grad is not None or sparse_grads[name] is not None:
            bound = 3e-6 * grad.abs().max().item()  # measured: at most 6.5e-7 of the gradient's largest entry
            torch.testing.assert_close(sparse_grads[name], grad, atol=bound, rtol=0, msg=name)


# Measured on this model (logits of spread 0.16): bf16 is at most 0.0052 from fp32 (0.032 of the spread),
# fp16 0.0007 (0.0043); cached decoding in half precision is at most 0.0073 (bf16) / 0.0007 (fp16) from
# the full forward in the same precision. The bounds are about 3× the measured error.
HALF_TOLERANCE = {torch.bfloat16: 0.1, torch.float16: 0.015}  # × the fp32 logits' standard deviation
HALF_CACHE_TOLERANCE = {torch.bfloat16: 0.15, torch.float16: 0.015}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_close_to_fp32(model, batch, dtype):
    ids, positions = batch
    half = tiny_model().to(dtype)
    half.load_state_dict(model.state_dict())
    logits, reference = half(ids, positions, 0)[0].float(), model(ids, positions, 0)[0]
    torch.testing.assert_close(logits, reference, atol=HALF_TOLERANCE[dtype] * reference.std().item(), rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_kv_cache_decoding_equals_half_precision_full_forward(model, batch, dtype):
    ids, positions = batch
    half = tiny_model().to(dtype)
    half.load_state_dict(model.state_dict())
    full = half(ids, positions, 0)[0].float()
    cache = half.new_kv_cache(capacity=8)
    pieces = [half.forward_cached(ids[:, :10], positions[:, :10], cache)]
    for t in range(10, ids.size(1)):
        pieces.append(half.forward_cached(ids[:, t : t + 1], positions[:, t : t + 1], cache))
    cached = torch.cat(pieces, 1)
    assert cached.dtype == dtype
    scale = model(ids, positions, 0)[0].std().item()
    torch.testing.assert_close(cached.float(), full, atol=HALF_CACHE_TOLERANCE[dtype] * scale, rtol=0)


def test_weight_decay_groups_exclude_layernorms_and_biases(model):
    decay, no_decay = gpt2_get_params_for_weight_decay_optimization(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "word_embeddings.weight" in decayed and "transformer.position_embeddings.weight" in decayed
    assert all(not n.endswith("bias") and "layernorm" not in n for n in decayed)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert no_decay["weight_decay"] == 0.0


def test_a_seed_draws_the_position_table_as_the_original_and_a_meta_build_draws_nothing():
    config = mpu.TransformerConfig(
        num_layers=1, hidden_size=HIDDEN, num_attention_heads=HEADS, max_sequence_length=SEQ,
        max_memory_length=0, embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0,
        checkpoint_activations=False,
    )  # fmt: skip
    torch.manual_seed(5)
    positions = mpu.GPT2ParallelTransformer(config).position_embeddings.weight
    torch.manual_seed(5)
    torch.randn(SEQ, HIDDEN)  # nn.Embedding's own N(0, 1) draw, overwritten by the init method's
    assert torch.equal(positions, torch.empty(SEQ, HIDDEN).normal_(0.0, config.init_method_std))
    state = torch.random.get_rng_state()
    with torch.device("meta"):
        built = GPT2Model(
            num_layers=LAYERS, vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS,
            embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0,
            max_sequence_length=SEQ, max_memory_length=0, checkpoint_activations=False,
        )  # fmt: skip
    assert all(p.is_meta for p in built.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
