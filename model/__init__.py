"""The CogView GPT model and its checkpoints."""

from .gpt2_modeling import GPT2Model, gpt2_get_params_for_weight_decay_optimization

__all__ = ["GPT2Model", "gpt2_get_params_for_weight_decay_optimization"]
