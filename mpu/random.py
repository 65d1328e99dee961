"""Model-parallel RNG streams and activation checkpointing that replays them.

Dropout inside a model-parallel region (attention probabilities, which are split by heads) must
differ between model-parallel ranks, while dropout on replicated activations must agree. The
tracker keeps named RNG states; ``fork()`` swaps one in around a block. It works on the CPU as
well as on CUDA (the original tracked CUDA states only): each state belongs to the device type it
was added for.
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.checkpoint import detach_variable

from .initialize import get_model_parallel_rank

_MODEL_PARALLEL_RNG_TRACKER_NAME = "model-parallel-rng"


def _default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _get_rng_state(device_type: str) -> torch.Tensor:
    return torch.cuda.get_rng_state() if device_type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


class RNGStatesTracker:
    """Named RNG states that ``fork()`` swaps in and out of the default generator."""

    def __init__(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.device_types_: dict[str, str] = {}
        self.seeds_: set[int] = set()

    def reset(self) -> None:
        self.states_.clear()
        self.device_types_.clear()
        self.seeds_.clear()

    def get_states(self) -> dict[str, torch.Tensor]:
        """A copy of the named states (for checkpoints and activation recomputation)."""
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states_ = {name: state.clone() for name, state in states.items()}

    def add(self, name: str, seed: int, device_type: str | None = None) -> None:
        """Register a new stream ``name`` seeded with ``seed``."""
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists in the RNG tracker")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} already exists in the RNG tracker")
        device_type = device_type or _default_device_type()
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator(device=device_type).manual_seed(seed).get_state()
        self.device_types_[name] = device_type

    @contextlib.contextmanager
    def fork(self, name: str = _MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
        """Run the block on stream ``name``, then put the default generator back where it was."""
        if name not in self.states_:
            raise RuntimeError(
                f"RNG state {name!r} was never added; call mpu.model_parallel_cuda_manual_seed(seed) first"
            )
        device_type = self.device_types_.get(name, _default_device_type())
        outside = _get_rng_state(device_type)
        _set_rng_state(self.states_[name], device_type)
        try:
            yield
        finally:
            self.states_[name] = _get_rng_state(device_type)
            _set_rng_state(outside, device_type)


# Kept under the original's names: code written for CogView calls these.
CudaRNGStatesTracker = RNGStatesTracker
_RNG_STATE_TRACKER = RNGStatesTracker()


def get_cuda_rng_tracker() -> RNGStatesTracker:
    """The process-wide tracker (the name is the original's; it also tracks CPU states)."""
    return _RNG_STATE_TRACKER


def model_parallel_cuda_manual_seed(seed: int, device_type: str | None = None) -> None:
    """Seed the default generator with ``seed`` and the model-parallel stream with ``seed + 2718 + mp_rank``.

    Parameters are therefore initialised identically on every rank, while dropout inside
    model-parallel regions differs between ranks, as in the original.
    """
    device_type = device_type or _default_device_type()
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
    _RNG_STATE_TRACKER.reset()
    _RNG_STATE_TRACKER.add(
        _MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + get_model_parallel_rank(), device_type
    )


def _capture_rng() -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    cuda_state = (
        torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return torch.get_rng_state(), cuda_state, _RNG_STATE_TRACKER.get_states()


def _restore_rng(states: tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]) -> None:
    cpu_state, cuda_state, tracker_states = states
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state)
    _RNG_STATE_TRACKER.set_states(tracker_states)


class CheckpointFunction(torch.autograd.Function):
    """Drop a block's activations in the forward pass and recompute them, with the same RNG, in backward."""

    @staticmethod
    def forward(ctx, run_function, *args):
        ctx.run_function = run_function
        ctx.rng_states = _capture_rng()
        with torch.no_grad():
            outputs = run_function(*args)
        ctx.save_for_backward(*[a for a in args if torch.is_tensor(a)])
        ctx.tensor_positions = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        ctx.other_args = [a if not torch.is_tensor(a) else None for a in args]
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        args = list(ctx.other_args)
        for position, tensor in zip(ctx.tensor_positions, detach_variable(ctx.saved_tensors), strict=True):
            args[position] = tensor
        after_forward = _capture_rng()
        _restore_rng(ctx.rng_states)
        with torch.enable_grad():
            outputs = ctx.run_function(*args)
        _restore_rng(after_forward)
        if torch.is_tensor(outputs):
            outputs = (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        grads = [a.grad if torch.is_tensor(a) else None for a in args]
        return (None, *grads)


def checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """Activation checkpointing that restores the CPU, CUDA and tracker RNG states on recomputation."""
    return CheckpointFunction.apply(function, *args)
