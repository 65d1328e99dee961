"""mpu.dropout: the CPU mask drawn 16 bits per element, against what ``F.dropout`` promises."""

import pytest
import torch

import mpu


def test_drops_the_asked_fraction_and_keeps_the_expectation():
    x = torch.ones(1 << 20)
    torch.manual_seed(0)
    y = mpu.dropout(x, 0.1)
    dropped = (y == 0).double().mean().item()
    sigma = (0.1 * 0.9 / x.numel()) ** 0.5
    assert abs(dropped - 0.1) < 5 * sigma
    kept_value = 65536 / (65536 - round(0.1 * 65536))  # 1 / the quantised keep probability
    assert torch.all((y == 0) | (y == torch.tensor(kept_value)))
    assert abs(y.double().mean().item() - 1.0) < 5 * sigma / 0.9


def test_same_seed_same_mask_and_the_gradient_is_the_mask():
    x = torch.randn(3, 37, 5, requires_grad=True)
    torch.manual_seed(4)
    first = mpu.dropout(x, 0.3)
    torch.manual_seed(4)
    second = mpu.dropout(x, 0.3)
    assert torch.equal(first, second)
    assert not torch.equal(first, mpu.dropout(x, 0.3))  # the generator moved on
    first.sum().backward()
    kept = first != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(x.grad, kept.float() * scale, rtol=0, atol=0)


def test_draws_from_the_default_generator_so_the_tracker_forks_it():
    """Inside ``fork()`` the mask comes from the tracker's stream, as ``nn.Dropout``'s would."""
    mpu.model_parallel_cuda_manual_seed(5, device_type="cpu")
    stream = mpu.get_cuda_rng_tracker().get_states()["model-parallel-rng"]
    x = torch.ones(4096)
    with mpu.get_cuda_rng_tracker().fork():
        inside = mpu.dropout(x, 0.5)
    torch.set_rng_state(stream)
    assert torch.equal(inside, mpu.dropout(x, 0.5))


@pytest.mark.parametrize(
    "x, p, training",
    [
        (torch.randn(8), 0.1, False),
        (torch.randn(8), 0.0, True),
        (torch.randn(8), 1e-6, True),  # below 2^-16: nothing to drop
    ],
)
def test_identity_where_nothing_is_dropped(x, p, training):
    assert mpu.dropout(x, p, training) is x


def test_module_is_a_drop_in_nn_dropout():
    module = mpu.Dropout(0.25)
    assert isinstance(module, torch.nn.Dropout) and module.state_dict() == {}
    x = torch.randn(64, 64)
    torch.manual_seed(2)
    expected = mpu.dropout(x, 0.25)
    torch.manual_seed(2)
    assert torch.equal(module(x), expected)
    assert torch.equal(module.eval()(x), x)
    in_place = mpu.Dropout(0.5, inplace=True)
    y = torch.ones(256)
    assert in_place(y) is y and bool((y == 0).any())


def test_p_one_drops_everything():
    assert torch.equal(mpu.dropout(torch.ones(4), 1.0), torch.zeros(4))
