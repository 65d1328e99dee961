"""AnnealingLR against the formulas of reference §9.2, written out here step by step, quirks included."""

import math

import pytest
import torch

from learning_rates import DECAY_STYLES, AnnealingLR

START = 4e-4
WARMUP = 100
END = 1000
RATIO = 0.1  # --lr-decay-ratio


def make_optimizer() -> torch.optim.Optimizer:
    """Two param groups with different initial lrs, so a step must overwrite both."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 2.0}], lr=1.0)


def expected_lr(style: str | None, n: int) -> float:
    """Reference §9.2 spelled out: warmup, then the style's decay (D = 1/ratio = 10)."""
    if n <= WARMUP:
        return START * n / WARMUP
    if style == "linear":
        return START * (END - (n - WARMUP)) / END
    if style == "cosine":
        r = min(1.0, (n - WARMUP) / END)
        return START / 10 * ((math.cos(math.pi * r) + 1) * 9 / 2 + 1)
    return START


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


@pytest.mark.parametrize("style", [*DECAY_STYLES, None])
@pytest.mark.parametrize("n", [0, 1, 50, 100, 101, 550, 900, 1000, 1100])
def test_lr_follows_the_reference_formula(style, n):
    optimizer = make_optimizer()
    scheduler = AnnealingLR(optimizer, START, WARMUP, END, style, decay_ratio=RATIO)
    scheduler.step(n)
    assert scheduler.get_lr() == pytest.approx(expected_lr(style, n), rel=1e-12, abs=1e-18)
    assert lrs(optimizer) == [scheduler.get_lr()] * 2


def test_hand_computed_anchor_values():
    linear = AnnealingLR(make_optimizer(), START, WARMUP, END, "linear", decay_ratio=RATIO)
    cosine = AnnealingLR(make_optimizer(), START, WARMUP, END, "cosine", decay_ratio=RATIO)
    for scheduler in (linear, cosine):
        assert scheduler.get_lr() == 0.0  # constructed at n = 0
        scheduler.step(50)
        assert scheduler.get_lr() == pytest.approx(2e-4)  # half-way through warmup
        scheduler.step(100)
        assert scheduler.get_lr() == pytest.approx(START)  # warmup peak
    linear.step(600)
    assert linear.get_lr() == pytest.approx(2e-4)  # 4e-4 * (1000 - 500) / 1000
    linear.step(1000)
    assert linear.get_lr() == pytest.approx(4e-5)  # quirk: ends at start * warmup / end, not 0
    cosine.step(600)
    assert cosine.get_lr() == pytest.approx(2.2e-4)  # r = 1/2: 4e-5 * (9/2 + 1)
    cosine.step(1000)
    assert cosine.get_lr() > 4e-5 * 1.01  # quirk: r = 0.9 at the end, the floor 4e-5 is not reached
    cosine.step(1100)
    assert cosine.get_lr() == pytest.approx(4e-5)  # r = 1 only past the end: start * ratio


def test_exponential_behaves_as_constant():
    scheduler = AnnealingLR(make_optimizer(), START, WARMUP, END, "exponential", decay_ratio=RATIO)
    for n in (101, 500, 1000):
        scheduler.step(n)
        assert scheduler.get_lr() == START


def test_linear_past_the_end_is_clamped_at_zero():
    scheduler = AnnealingLR(make_optimizer(), START, WARMUP, END, "linear")
    scheduler.step(END + WARMUP + 50)
    assert scheduler.get_lr() == 0.0


def test_no_warmup_starts_decaying_at_once():
    scheduler = AnnealingLR(make_optimizer(), START, 0, END, "linear")
    assert scheduler.get_lr() == pytest.approx(START)
    scheduler.step(250)
    assert scheduler.get_lr() == pytest.approx(3e-4)


def test_step_counts_and_sets_every_group():
    optimizer = make_optimizer()
    scheduler = AnnealingLR(optimizer, START, WARMUP, END, "cosine", decay_ratio=RATIO)
    assert lrs(optimizer) == [0.0, 0.0]  # construction already applies step 0
    for n in range(1, 151):
        scheduler.step()
        assert scheduler.num_iters == n
        assert lrs(optimizer) == [pytest.approx(expected_lr("cosine", n))] * 2


def test_last_iter_resumes_mid_schedule():
    optimizer = make_optimizer()
    AnnealingLR(optimizer, START, WARMUP, END, "linear", last_iter=599)
    assert lrs(optimizer) == [pytest.approx(expected_lr("linear", 600))] * 2


def test_defaults_and_reciprocal_ratio():
    scheduler = AnnealingLR(make_optimizer(), START, WARMUP, END)
    assert scheduler.decay_style is None and scheduler.decay_ratio == 2.0  # default ratio 0.5
    assert AnnealingLR(make_optimizer(), START, WARMUP, END, "COSINE", decay_ratio=0.1).decay_ratio == 10.0
    assert AnnealingLR.DECAY_STYLES == ["linear", "cosine", "exponential", "constant"]


def test_state_dict_round_trip():
    scheduler = AnnealingLR(make_optimizer(), START, WARMUP, END, "cosine", decay_ratio=RATIO)
    scheduler.step(345)
    state = scheduler.state_dict()
    assert state == {
        "warmup_iter": 100,
        "num_iters": 345,
        "decay_style": "cosine",
        "end_iter": 1000,
        "decay_ratio": 10,
    }

    optimizer = make_optimizer()
    resumed = AnnealingLR(optimizer, START, 7, 2000, "linear", decay_ratio=0.5)
    resumed.load_state_dict(state)
    assert (resumed.warmup_iter, resumed.num_iters, resumed.decay_style, resumed.decay_ratio) == (
        100,
        345,
        "cosine",
        10,
    )
    assert resumed.end_iter == 2000  # not restored, as the original: the new command line decides
    expected = START / 10 * ((math.cos(math.pi * 245 / 2000) + 1) * 9 / 2 + 1)
    assert lrs(optimizer) == [pytest.approx(expected)] * 2

    resumed.step()
    scheduler.step()
    scheduler.end_iter = 2000
    assert resumed.get_lr() == pytest.approx(scheduler.get_lr())


def test_state_without_decay_ratio_keeps_the_constructed_one():
    scheduler = AnnealingLR(make_optimizer(), START, WARMUP, END, "cosine", decay_ratio=0.25)
    scheduler.load_state_dict({"warmup_iter": 10, "num_iters": 20, "decay_style": "cosine", "end_iter": 99})
    assert scheduler.decay_ratio == 4.0 and scheduler.num_iters == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay_style": "step"}, "decay_style 'step'"),
        ({"decay_ratio": 0.0}, "decay_ratio must be positive"),
        ({"warmup_iter": 2000}, "warmup_iter 2000 is longer than num_iters 1000"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, message):
    config = {"start_lr": START, "warmup_iter": WARMUP, "num_iters": END, **kwargs}
    with pytest.raises(ValueError, match=message):
        AnnealingLR(make_optimizer(), **config)
