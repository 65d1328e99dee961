"""Named wall-clock timers with the original's interface: ``timers('forward').start()`` ... ``.stop()``."""

import time

import torch


class _Timer:
    def __init__(self) -> None:
        self.elapsed_ = 0.0
        self.started_at: float | None = None

    def start(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.started_at = time.perf_counter()

    def stop(self) -> None:
        if self.started_at is None:
            return
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.elapsed_ += time.perf_counter() - self.started_at
        self.started_at = None

    def elapsed(self, reset: bool = True) -> float:
        """Seconds accumulated since the last reset (a running timer counts up to now)."""
        total = self.elapsed_
        if self.started_at is not None:
            total += time.perf_counter() - self.started_at
            self.started_at = time.perf_counter() if reset else self.started_at
        if reset:
            self.elapsed_ = 0.0
        return total


class Timers:
    """A timer per name, created on first use."""

    def __init__(self) -> None:
        self.timers: dict[str, _Timer] = {}

    def __call__(self, name: str) -> _Timer:
        return self.timers.setdefault(name, _Timer())

    def log(self, names: list[str], normalizer: float = 1.0, reset: bool = True) -> str:
        """``time (ms) | forward: 12.34 | ...`` for the named timers, each divided by `normalizer`."""
        parts = [
            f"{name}: {self.timers[name].elapsed(reset) * 1000.0 / normalizer:.2f}"
            for name in names
            if name in self.timers
        ]
        return "time (ms) | " + " | ".join(parts)


def timer_or_null(timers: Timers | None, name: str):
    """`timers(name)`, or a do-nothing timer when `timers` is None (the functions accept None)."""
    return timers(name) if timers is not None else _NULL


class _NullTimer:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


_NULL = _NullTimer()
