"""The CogView GPT model and its checkpoints."""

from .checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    read_tracker,
    reshard_checkpoint,
    save_checkpoint,
)
from .config import GPT2Config
from .gpt2_modeling import GPT2Model, gpt2_get_params_for_weight_decay_optimization

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "GPT2Config",
    "GPT2Model",
    "gpt2_get_params_for_weight_decay_optimization",
    "load_checkpoint",
    "read_tracker",
    "reshard_checkpoint",
    "save_checkpoint",
]
