"""The learning-rate schedule of CogView pretraining: linear warmup, then linear, cosine or constant decay.

Faithful to the original `AnnealingLR`, quirks included, because the released training
schedules (for example `--lr-decay-style cosine --warmup .1`) were tuned with them.
"""

import math
from typing import Any

import torch

DECAY_STYLES = ["linear", "cosine", "exponential", "constant"]


class AnnealingLR:
    """Sets every param group's lr from the step counter n: warmup, then decay by `decay_style`.

    * Warmup (only when `warmup_iter > 0`), while n ≤ warmup_iter: lr = start·n/warmup_iter.
    * `linear`: lr = start·(end − (n − warmup))/end. Quirk kept: the ratio is ignored and the schedule
      ends at start·warmup/end, not 0. Past n = end + warmup it is clamped at 0 (the original went
      negative there, which only happens if `--lr-decay-iters` is shorter than training).
    * `cosine`: r = min(1, (n − warmup)/end), lr = start/D·((cos πr + 1)·(D − 1)/2 + 1) with
      D = 1/decay_ratio, going from start toward start·decay_ratio. Quirk kept: r divides by the total
      `end` rather than `end − warmup`, so the floor is not reached within training.
    * `exponential`: quirk kept, never implemented, behaves as `constant`.
    * `constant` or None: lr = start.

    `decay_ratio` is stored as its reciprocal D (so `state_dict()['decay_ratio']` is 10 for 0.1).
    `step()` is meant to be called once per optimizer step (DeepSpeed skips it on fp16 overflow).
    `load_state_dict` restores warmup_iter, num_iters, decay_style and D, but not start_lr or end_iter, so
    a resumed run takes those from its command line.
    """

    DECAY_STYLES = DECAY_STYLES  # also reachable as a class attribute, as in the original

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        start_lr: float,
        warmup_iter: float,
        num_iters: int,
        decay_style: str | None = None,
        last_iter: int = -1,
        decay_ratio: float = 0.5,
    ) -> None:
        if decay_style is not None and decay_style.lower() not in DECAY_STYLES:
            raise ValueError(f"decay_style {decay_style!r} is not one of {DECAY_STYLES} or None")
        if not decay_ratio > 0:
            raise ValueError(f"decay_ratio must be positive, got {decay_ratio}")
        if warmup_iter > num_iters:
            raise ValueError(f"warmup_iter {warmup_iter} is longer than num_iters {num_iters}")
        self.optimizer = optimizer
        self.start_lr = start_lr
        self.warmup_iter = warmup_iter
        self.end_iter = num_iters
        self.decay_style = decay_style.lower() if decay_style is not None else None
        self.decay_ratio = 1 / decay_ratio
        self.num_iters = last_iter + 1
        self.step(self.num_iters)

    def get_lr(self) -> float:
        """The learning rate at the current step counter `num_iters` (formulas in the class docstring)."""
        n, warmup, end = self.num_iters, self.warmup_iter, self.end_iter
        if warmup > 0 and n <= warmup:
            return float(self.start_lr) * n / warmup
        if self.decay_style == "linear":
            return max(0.0, self.start_lr * (end - (n - warmup)) / end)
        if self.decay_style == "cosine":
            progress = min(1.0, (n - warmup) / end)
            d = self.decay_ratio
            return self.start_lr / d * ((math.cos(math.pi * progress) + 1) * (d - 1) / 2 + 1)
        return float(self.start_lr)

    def step(self, step_num: int | None = None) -> None:
        """Advance the counter by one (or set it to `step_num`); write the new lr into every param group."""
        self.num_iters = self.num_iters + 1 if step_num is None else step_num
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state in the original's checkpoint layout (`decay_ratio` holds the reciprocal D)."""
        return {
            "warmup_iter": self.warmup_iter,
            "num_iters": self.num_iters,
            "decay_style": self.decay_style,
            "end_iter": self.end_iter,
            "decay_ratio": self.decay_ratio,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpointed schedule and re-apply its lr; `start_lr` and `end_iter` stay as built."""
        self.warmup_iter = state["warmup_iter"]
        self.num_iters = state["num_iters"]
        self.decay_style = state["decay_style"]
        # Like the original, tolerate checkpoints without the key and keep the constructed ratio then.
        self.decay_ratio = state.get("decay_ratio", self.decay_ratio)
        self.step(self.num_iters)
