"""CPU linear layers through oneDNN, plain and packed: equal to ``F.linear`` (values, gradients)."""

import pytest
import torch
import torch.nn.functional as F

import mpu
from model import GPT2Model
from mpu import onednn

pytestmark = pytest.mark.skipif(onednn._inner_product_op is None, reason="PyTorch built without oneDNN")


def _pair(rows_shape: tuple[int, ...], out_features: int, in_features: int, bias: bool):
    generator = torch.Generator().manual_seed(0)
    input_ = torch.randn(*rows_shape, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
    bias_ = torch.randn(out_features, generator=generator) if bias else None
    return input_, weight, bias_


@pytest.mark.parametrize("rows_shape", [(1,), (4,), (2, 37)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("intel", [True, False], ids=["input-grad-in-mkl", "input-grad-in-onednn"])
def test_forward_and_gradients_equal_f_linear(rows_shape, bias, intel, monkeypatch):
    monkeypatch.setattr(onednn, "_mkl_is_tuned_here", lambda: intel)  # both backward paths, on any CPU
    input_, weight, bias_ = _pair(rows_shape, 1024, 768, bias)
    assert onednn.handles(input_, weight)
    operands = (input_, weight) + ((bias_,) if bias else ())
    leaves = [t.clone().requires_grad_() for t in operands]
    reference = [t.clone().requires_grad_() for t in operands]
    ours = mpu.linear(*leaves)
    expected = F.linear(*reference)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(expected)
    ours.backward(upstream)
    expected.backward(upstream)
    for got, want in zip(leaves, reference, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)


def test_only_the_weight_trainable_and_a_transposed_input():
    input_, weight, bias_ = _pair((8,), 1024, 768, True)
    input_ = input_.t().contiguous().t()  # same values, column-major
    trained = weight.clone().requires_grad_()
    reference = weight.clone().requires_grad_()
    mpu.linear(input_, trained, bias_).square().sum().backward()
    F.linear(input_, reference, bias_).square().sum().backward()
    torch.testing.assert_close(trained.grad, reference.grad, rtol=1e-4, atol=1e-3)


def test_repeats_bit_for_bit():
    input_, weight, bias_ = _pair((3, 5), 1024, 768, True)
    assert torch.equal(mpu.linear(input_, weight, bias_), mpu.linear(input_.clone(), weight, bias_))


def test_left_to_f_linear_where_it_does_not_gain_or_cannot_run():
    input_, weight, _ = _pair((4,), 1024, 768, False)
    assert not onednn.handles(input_[:, :64], weight[:64, :64])  # a small product
    assert not onednn.handles(input_.bfloat16(), weight.bfloat16())  # bf16 already runs in oneDNN
    assert not onednn.handles(input_.double(), weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.handles(input_, weight)  # only F.linear is cast by autocast
        assert mpu.linear(input_, weight).dtype == torch.bfloat16


VOCAB, HIDDEN, IMAGE_IDS = 1024, 512, 512  # every weight, and the image rows, big enough to be copied


def _gpt(dtype: torch.dtype = torch.float32) -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model(2, VOCAB, HIDDEN, 8, 0.0, 0.0, 0.0, 64, 64, False).eval().to(dtype)


def _cached_logits(model: GPT2Model, ids: torch.Tensor) -> torch.Tensor:
    """A prompt, then two tokens one at a time on the cache: the decoding path the copies are for."""
    cache = model.new_kv_cache(ids.size(1))
    positions = torch.arange(ids.size(1))[None].expand_as(ids)
    logits = [model.forward_cached(ids[:, :-2], positions[:, :-2], cache)[..., :IMAGE_IDS]]
    for step in (-2, -1):  # projected onto the "image ids" only, as sampling an image projects onto its codes
        step_ids, step_positions = ids[:, step:][:, :1], positions[:, step:][:, :1]
        logits.append(model.forward_cached(step_ids, step_positions, cache, vocab_range=(0, IMAGE_IDS)))
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_give_the_plain_weights_logits_and_are_dropped_after(dtype, monkeypatch):
    monkeypatch.setattr(onednn, "_mkl_is_tuned_here", lambda: False)  # 3-row steps use the copies everywhere
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bf16")
    model = _gpt(dtype)
    ids = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = _cached_logits(model, ids)
        with mpu.packed_linear_weights(model) as made:
            weight = model.transformer.layers[0].mlp.dense_h_to_4h.weight
            assert made and onednn.packed_copy(ids.to(dtype), weight) is not None
            packed = _cached_logits(model, ids)
            embedding = model.word_embeddings.weight
            assert list(getattr(embedding, onednn._ROW_SLICES_ATTRIBUTE)) == [(0, IMAGE_IDS)]  # copied once
    assert not hasattr(weight, onednn._PACKED_ATTRIBUTE)
    assert not hasattr(embedding, onednn._ROW_SLICES_ATTRIBUTE)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(packed.float(), plain.float(), rtol=tolerance, atol=tolerance)


def test_intel_cpus_multiply_one_to_three_rows_through_mkl(monkeypatch):
    model = _gpt()
    layer = model.transformer.layers[0].mlp.dense_h_to_4h
    monkeypatch.setattr(onednn, "_mkl_is_tuned_here", lambda: True)
    with torch.inference_mode(), mpu.packed_linear_weights(model) as made:
        assert made
        for rows, through_mkl in ((1, True), (3, True), (4, False)):
            hidden = torch.randn(rows, HIDDEN)
            assert onednn.mkl_streams_faster(hidden, layer.weight) is through_mkl
            if through_mkl:
                expected = F.linear(hidden, layer.weight, layer.bias)
            else:
                packed = onednn.packed_copy(hidden, layer.weight)
                expected = onednn.multiply_packed(hidden, packed, layer.bias)
            assert torch.equal(mpu.linear(hidden, layer.weight, layer.bias), expected), rows
        assert not onednn.mkl_streams_faster(torch.randn(1, 64), torch.randn(64, 64))  # small: its own path
    monkeypatch.setattr(onednn, "_mkl_is_tuned_here", lambda: False)
    assert not onednn.mkl_streams_faster(torch.randn(1, HIDDEN), layer.weight)


def test_packed_copies_are_not_used_for_changed_weights_or_training():
    model = _gpt()
    layer = model.transformer.layers[0].mlp.dense_h_to_4h
    hidden = torch.randn(4, HIDDEN)
    with mpu.packed_linear_weights(model):
        with torch.no_grad():
            layer.weight.mul_(2)  # changed in place: the copy is stale
            torch.testing.assert_close(layer(hidden), F.linear(hidden, layer.weight, layer.bias))
        output = layer(hidden)  # gradients recorded: the plain weight, which they reach
        output.sum().backward()
    assert layer.weight.grad is not None and output.requires_grad


def test_no_packed_copies_of_small_weights():
    torch.manual_seed(0)
    small = GPT2Model(2, 320, 64, 4, 0.0, 0.0, 0.0, 64, 64, False).eval()  # like the demo models' layers
    with mpu.packed_linear_weights(small) as made:
        assert not made


def test_no_packed_copies_where_they_would_not_fit(monkeypatch):
    model = _gpt()
    monkeypatch.setattr(onednn, "available_memory_bytes", lambda: 1024)
    with mpu.packed_linear_weights(model) as made:
        assert not made
        weight = model.transformer.layers[0].mlp.dense_h_to_4h.weight
        assert onednn.packed_copy(torch.randn(1, HIDDEN), weight) is None
