"""What training prints and records: the original's iteration line plus tokens/s, MFU and ETA;
validation lines; tensorboard scalars (tensorboardX); an optional JSON-lines metrics file.

MFU counts 6·N + 12·L·h·s FLOPs per trained token (N parameters, L layers, hidden h, sequence s:
forward and backward of the matmuls and of attention) against the matmul ceiling measured on this
machine at start-up, in the training dtype, with the faster of the kernels the model can use.
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import mpu


def model_flops_per_token(num_params: int, num_layers: int, hidden_size: int, seq_length: int) -> float:
    """Training FLOPs per token: 6N for the weights, 12·L·h·s for the attention scores and sums."""
    return 6.0 * num_params + 12.0 * num_layers * hidden_size * seq_length


def measure_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, rounds: int = 3) -> float:
    """This device's dense matmul rate in FLOP/s (the best of a few short timed loops of square matmuls).

    The faster of ``torch.matmul`` and ``mpu.linear``, which the model's layers multiply with (on the CPU
    it goes through oneDNN, nearly twice MKL's fp32 rate on AMD CPUs), so MFU is against the best kernel.
    The best of ``rounds`` loops, because one loop of a tenth of a second on a shared machine can catch a
    neighbour's burst: one such start-up measured half the rate, and reported an MFU of 93%.
    """
    size = 1024 if device.type == "cpu" else 8192
    a = torch.full((size, size), 0.5, device=device, dtype=dtype)  # no draw from the training RNG
    b = torch.full((size, size), 0.25, device=device, dtype=dtype)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = 0.0
    for product in (torch.matmul, mpu.linear):
        with torch.no_grad():
            product(a, b)
            synchronize()
            for _ in range(rounds):
                reps, start = 5, time.perf_counter()
                for _ in range(reps):
                    product(a, b)
                synchronize()
                best = max(best, 2.0 * size**3 * reps / (time.perf_counter() - start))
    return best


def format_duration(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def iteration_line(
    iteration: int,
    total: int,
    ms_per_iteration: float,
    lr: float,
    lm_loss: float,
    img_loss: float,
    txt_loss: float,
    loss_scale: float,
    tokens_per_second: float,
    mfu: float,
) -> str:
    """The original's line, then tokens/s, MFU and the time left at this speed."""
    eta = format_duration((total - iteration) * ms_per_iteration / 1000.0)
    return (
        f" iteration {iteration:8d}/{total:8d} | elapsed time per iteration (ms): {ms_per_iteration:.1f} |"
        f" learning rate {lr:.3E} | lm loss {lm_loss:.6E} | img loss {img_loss:.6E} |"
        f" unscaled txt loss {txt_loss:.6E} | loss scale {loss_scale:.1f} |"
        f" tokens/s {tokens_per_second:.0f} | MFU {mfu:.1%} | ETA {eta} |"
    )


def validation_line(prefix: str, loss: float) -> str:
    """The original's validation line; PPL = exp(min(20, loss))."""
    return f" validation loss at {prefix} | LM loss: {loss:.6E} | LM PPL: {math.exp(min(20, loss)):.6E}"


class Recorder:
    """Rank 0's outputs: printed lines, tensorboard scalars, and JSON lines in `--log-file` (added)."""

    def __init__(self, args: argparse.Namespace, start_iteration: int):
        self.active = not dist.is_initialized() or dist.get_rank() == 0
        self.writer = None
        self.log_file = Path(args.log_file) if getattr(args, "log_file", None) else None
        if self.active and args.summary_dir:
            from tensorboardX import SummaryWriter

            log_dir = Path(args.summary_dir) / "runs" / args.experiment_name
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_iteration)

    def line(self, text: str) -> None:
        if self.active:
            print(text, flush=True)

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        """`Train/<name>` tensorboard scalars and one JSON line, both at `iteration`."""
        if not self.active:
            return
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"Train/{name}", value, iteration)
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as file:
                file.write(json.dumps({"iteration": iteration, **values}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def loss_scale(optimizer: Any) -> float:
    """The fp16 loss scale (1 when there is none)."""
    for name in ("cur_scale", "loss_scale"):
        value = getattr(optimizer, name, None)
        if isinstance(value, int | float):
            return float(value)
    return 1.0
