"""The original's import path of the CogView transformer; its parts live in ``mpu.transformer``,
``mpu.attention``, ``mpu.sparse_attention`` and ``mpu.layernorm``."""

from .attention import GPT2ParallelSelfAttention, standard_attention
from .layernorm import LayerNorm
from .sparse_attention import sparse_attention, sparse_attention_inference
from .transformer import (
    GPT2ParallelMLP,
    GPT2ParallelTransformer,
    GPT2ParallelTransformerLayer,
    gelu,
    scaled_init_method,
    unscaled_init_method,
)

__all__ = [
    "GPT2ParallelMLP",
    "GPT2ParallelSelfAttention",
    "GPT2ParallelTransformer",
    "GPT2ParallelTransformerLayer",
    "LayerNorm",
    "gelu",
    "scaled_init_method",
    "sparse_attention",
    "sparse_attention_inference",
    "standard_attention",
    "unscaled_init_method",
]
