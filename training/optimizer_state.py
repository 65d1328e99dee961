"""Adam state by parameter name, so a run can resume on another data-parallel size or ZeRO stage.

DeepSpeed refuses to load ZeRO optimizer files written at another data-parallel size. Its ZeRO-1/2
files hold, per rank, one contiguous slice of each parameter group flattened in order (padding only
at the end), and the model-states file lists the group's parameter names and shapes (`param_shapes`).
Concatenating the slices and walking those shapes gives each parameter's full `exp_avg`, `exp_avg_sq`
and fp32 master weight, which are then written into whatever optimizer the new run has: a ZeRO
optimizer through DeepSpeed's `safe_set_full_*` helpers, or a plain `torch.optim.AdamW`.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.checkpoint import CheckpointError

ADAM_KEYS = ("exp_avg", "exp_avg_sq")
FP32_KEY = "fp32"


@dataclass
class FullOptimizerState:
    """Adam's step count and, per parameter name, full tensors for `ADAM_KEYS` (and `FP32_KEY` if known)."""

    step: float
    per_param: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def zero_file(folder: Path, dp_rank: int, mp_rank: int) -> Path:
    """DeepSpeed's ZeRO-1/2 optimizer file of one data-parallel and model-parallel rank."""
    return folder / f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_optim_states.pt"


def _load_deepspeed_file(path: Path) -> dict[str, Any]:
    """A DeepSpeed optimizer file. It pickles DeepSpeed's own classes (loss scaler, fragment addresses),
    so it is read the way DeepSpeed reads it; it comes from this run's own `--save` folder."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"ZeRO optimizer file {path} is missing") from None
    except (EOFError, RuntimeError, OSError) as error:
        raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({error})") from error


def _step_value(step: Any) -> float:
    return float(step.item() if torch.is_tensor(step) else step)


def from_zero_files(folder: Path, model_states: dict[str, Any], mp_rank: int) -> FullOptimizerState:
    """Consolidate the ZeRO-1/2 files of `folder` (written at `model_states['dp_world_size']` ranks)."""
    dp_size = int(model_states["dp_world_size"])
    shards = [
        _load_deepspeed_file(zero_file(folder, r, mp_rank))["optimizer_state_dict"] for r in range(dp_size)
    ]
    state = FullOptimizerState(step=0.0)
    for group, shapes in enumerate(model_states["param_shapes"]):
        flats = {
            key: torch.cat([s["base_optimizer_state"]["state"][group][key] for s in shards])
            for key in ADAM_KEYS
        }
        flats[FP32_KEY] = torch.cat([s["single_partition_of_fp32_groups"][group] for s in shards])
        state.step = _step_value(shards[0]["base_optimizer_state"]["state"][group]["step"])
        offset = 0
        for name, shape in shapes.items():
            numel = int(torch.Size(shape).numel())
            state.per_param[name] = {
                key: flat[offset : offset + numel].view(shape).clone() for key, flat in flats.items()
            }
            offset += numel
    return state


def ordered_param_names(model: nn.Module, param_groups: list[dict]) -> list[str]:
    """Parameter names in the order the optimizer's groups list them (a torch state dict's indices)."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in param_groups for param in group["params"]]


def from_torch_state_dict(optimizer_state: dict[str, Any], names: list[str]) -> FullOptimizerState:
    """A `torch.optim.AdamW` state dict (plain path or DeepSpeed without ZeRO) keyed by parameter name."""
    indices = [index for group in optimizer_state["param_groups"] for index in group["params"]]
    if len(indices) != len(names):
        raise CheckpointError(
            f"the saved optimizer has {len(indices)} parameters but the model has {len(names)}"
        )
    state = FullOptimizerState(step=0.0)
    for index, name in zip(indices, names, strict=True):
        entry = optimizer_state["state"].get(index)
        if entry:
            state.step = _step_value(entry["step"])
            state.per_param[name] = {key: entry[key] for key in ADAM_KEYS}
    return state


def _step_tensor(optimizer: torch.optim.Optimizer, device: torch.device, step: float) -> torch.Tensor:
    """Adam's step count as torch keeps it: on the parameters' device for its fused and capturable
    kernels (which refuse a step elsewhere), on the CPU otherwise."""
    group = optimizer.param_groups[0]
    on_device = group.get("fused") or group.get("capturable")
    return torch.tensor(step, dtype=torch.float32, device=device if on_device else "cpu")


def apply_to_torch_optimizer(
    optimizer: torch.optim.Optimizer, model: nn.Module, state: FullOptimizerState
) -> None:
    """Write `state` into a `torch.optim.AdamW` whose parameters belong to `model`."""
    params = dict(model.named_parameters())
    for name, entry in state.per_param.items():
        param = params[name]
        optimizer.state[param] = {
            "step": _step_tensor(optimizer, param.device, state.step),
            **{key: entry[key].to(param.device, torch.float32).clone() for key in ADAM_KEYS},
        }


def apply_to_zero_optimizer(zero_optimizer: Any, model: nn.Module, state: FullOptimizerState) -> None:
    """Write `state` into a DeepSpeed ZeRO-1/2 optimizer; each rank keeps the slices it owns."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    # Adam's state appears at the first step, and the parameters' links into it with it: make both now.
    base = zero_optimizer.optimizer
    for flat in zero_optimizer.single_partition_of_fp32_groups:
        base.state[flat] = {
            "step": _step_tensor(base, flat.device, state.step),
            **{key: torch.zeros_like(flat) for key in ADAM_KEYS},
        }
    zero_optimizer._hp_optimizer_states_linked = False
    zero_optimizer._lazy_init_hp_params_optimizer_state()
    for name, param in model.named_parameters():
        entry = state.per_param.get(name)
        if entry is None:
            continue
        for key in ADAM_KEYS:
            safe_set_full_optimizer_state(param, entry[key].float(), key)
        if FP32_KEY in entry:
            safe_set_full_fp32_param(param, entry[FP32_KEY].float())
