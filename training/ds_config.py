"""The DeepSpeed JSON configuration, read once and adapted to this machine and command line.

* fp16 is rejected by DeepSpeed on a CPU: there it is switched to fp32 with one printed line (`--bf16`
  asks for bf16 instead, on any device).
* `"type": "Adam"` / `"AdamW"` get `"torch_adam": true` unless the file says otherwise: DeepSpeed
  would otherwise JIT-compile its fused Adam (about 50 s on a CPU, a CUDA toolkit on a GPU), and
  `torch.optim.AdamW` is the same decoupled-weight-decay update the original's FusedAdam made. It then
  also gets `TORCH_ADAMW_OPTIONS` (torch's own fused kernel) unless the file sets those keys.
* The batch sizes must agree: `train_batch_size`, when given, equals micro-batch × accumulation ×
  data-parallel size.
"""

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import torch

from common.errors import InputError

ADAM_TYPES = ("adam", "adamw")

TORCH_ADAMW_OPTIONS = {"fused": True}
"""Keyword arguments of every `torch.optim.AdamW` training makes (DeepSpeed's with `torch_adam`, and the
plain-torch path's): torch's fused kernel updates each parameter in one pass over its weights, gradient
and two moments, where the default CPU implementation makes one pass per elementwise op (130M parameters
on 2 cores of an Intel Xeon: 0.08 s a step against 0.43 s)."""


class DeepSpeedConfigError(InputError):
    """A DeepSpeed configuration that cannot be used as it is (the message names the file and key)."""


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path` (one clear error when missing or malformed)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeepSpeedConfigError(f"DeepSpeed config file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise DeepSpeedConfigError(
            f"DeepSpeed config file {path} is not valid JSON: {error.msg} at line {error.lineno}"
        ) from None
    if not isinstance(config, dict):
        raise DeepSpeedConfigError(f"DeepSpeed config file {path} must hold a JSON object")
    return config


def _enabled(config: dict[str, Any], key: str) -> bool:
    section = config.get(key)
    return isinstance(section, dict) and bool(section.get("enabled", False))


def adapt_config(
    config: dict[str, Any], args: argparse.Namespace, device: torch.device, data_parallel_size: int
) -> dict[str, Any]:
    """A copy of `config` ready for `deepspeed.initialize` here; sets `args.fp16` / `args.bf16` to match."""
    config = copy.deepcopy(config)
    source = args.deepspeed_config or "the DeepSpeed config"
    config["train_micro_batch_size_per_gpu"] = args.batch_size
    config["gradient_accumulation_steps"] = args.gradient_accumulation_steps or config.get(
        "gradient_accumulation_steps", 1
    )
    expected = args.batch_size * config["gradient_accumulation_steps"] * data_parallel_size
    if "train_batch_size" in config and config["train_batch_size"] != expected:
        raise DeepSpeedConfigError(
            f"{source}: train_batch_size {config['train_batch_size']} is not micro-batch {args.batch_size} "
            f"x gradient_accumulation_steps {config['gradient_accumulation_steps']} x data-parallel size "
            f"{data_parallel_size} = {expected}"
        )
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above
    if args.bf16:
        config["bf16"] = {**config.get("bf16", {}), "enabled": True}
        config.pop("fp16", None)
    elif _enabled(config, "fp16") and device.type == "cpu":
        print(f"{source}: fp16 is not supported on a CPU; training in fp32 instead", flush=True)
        config.pop("fp16")
    args.fp16 = _enabled(config, "fp16")
    args.bf16 = _enabled(config, "bf16")
    optimizer = config.get("optimizer")
    if isinstance(optimizer, dict) and str(optimizer.get("type", "")).lower() in ADAM_TYPES:
        params = optimizer.setdefault("params", {})
        if params.setdefault("torch_adam", True):
            for key, value in TORCH_ADAMW_OPTIONS.items():
                params.setdefault(key, value)
    return config


def initialize_args(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` for `deepspeed.initialize(args=...)` that carries no config path.

    The adapted configuration is passed as `config=`; DeepSpeed refuses to get both.
    """
    clone = copy.copy(args)
    clone.deepspeed_config = None
    clone.deepscale_config = None
    return clone
