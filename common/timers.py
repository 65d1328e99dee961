"""Named wall-clock timers for training logs, with the original's (Megatron's) interface.

``timers("forward").start()`` ... ``.stop()`` accumulates; ``timers.log(["forward", "backward"])`` prints
``time (ms) | forward: 12.34 | backward: 23.45`` on rank 0. CUDA work is synchronised before each reading,
so the times are those of the GPU work, not of its launch.
"""

import time
from collections.abc import Sequence

import torch

from common.process_env import print_rank_0


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer:
    """One timer: ``start``/``stop`` pairs add up until ``reset``."""

    def __init__(self, name: str):
        self.name = name
        self.elapsed_ = 0.0
        self.started = False
        self.start_time = 0.0

    def start(self) -> None:
        """Start timing; the timer must not be running."""
        assert not self.started, f"timer {self.name} has already been started"
        _synchronize()
        self.start_time = time.perf_counter()
        self.started = True

    def stop(self) -> None:
        """Stop timing and add the interval; the timer must be running."""
        assert self.started, f"timer {self.name} is not started"
        _synchronize()
        self.elapsed_ += time.perf_counter() - self.start_time
        self.started = False

    def reset(self) -> None:
        """Forget the accumulated time and stop."""
        self.elapsed_ = 0.0
        self.started = False

    def elapsed(self, reset: bool = True) -> float:
        """Seconds accumulated (a running timer is read without losing its interval); then reset."""
        running = self.started
        if running:
            self.stop()
        total = self.elapsed_
        if reset:
            self.reset()
        if running:
            self.start()
        return total


class Timers:
    """Timers by name, created on first use."""

    def __init__(self) -> None:
        self.timers: dict[str, Timer] = {}

    def __call__(self, name: str) -> Timer:
        if name not in self.timers:
            self.timers[name] = Timer(name)
        return self.timers[name]

    def log(self, names: Sequence[str], normalizer: float = 1.0, reset: bool = True) -> str:
        """Print (rank 0) and return the milliseconds of ``names``, each divided by ``normalizer``."""
        assert normalizer > 0.0
        parts = [f"{name}: {self(name).elapsed(reset=reset) * 1000.0 / normalizer:.2f}" for name in names]
        line = " | ".join(["time (ms)", *parts])
        print_rank_0(line)
        return line
