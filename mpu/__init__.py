"""Megatron-style model parallelism plus the CogView transformer (the original ``mpu`` package's names)."""

from .attention import GPT2ParallelSelfAttention, causal_mask, fused_attention, standard_attention
from .config import TransformerConfig
from .cross_entropy import vocab_parallel_cross_entropy
from .data import broadcast_data
from .dropout import Dropout, dropout
from .grads import clip_grad_norm
from .initialize import (
    destroy_model_parallel,
    get_data_parallel_group,
    get_data_parallel_rank,
    get_data_parallel_world_size,
    get_model_parallel_group,
    get_model_parallel_rank,
    get_model_parallel_src_rank,
    get_model_parallel_world_size,
    initialize_model_parallel,
    model_parallel_is_initialized,
)
from .kv_cache import KVCache, LayerKVCache
from .layernorm import LayerNorm
from .layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    linear,
    packed_linear_weights,
)
from .mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
    scatter_to_model_parallel_region,
)
from .random import (
    CudaRNGStatesTracker,
    RNGStatesTracker,
    checkpoint,
    get_cuda_rng_tracker,
    model_parallel_cuda_manual_seed,
)
from .sparse_attention import (
    SparseAttentionConfigError,
    sample_pivot_indices,
    sparse_attention,
    sparse_attention_inference,
)
from .transformer import (
    GPT2ParallelMLP,
    GPT2ParallelTransformer,
    GPT2ParallelTransformerLayer,
    gelu,
    scaled_init_method,
    unscaled_init_method,
)
from .utils import VocabUtility, divide, ensure_divisibility, split_tensor_along_last_dim

__all__ = [
    "ColumnParallelLinear",
    "CudaRNGStatesTracker",
    "Dropout",
    "GPT2ParallelMLP",
    "GPT2ParallelSelfAttention",
    "GPT2ParallelTransformer",
    "GPT2ParallelTransformerLayer",
    "KVCache",
    "LayerKVCache",
    "LayerNorm",
    "RNGStatesTracker",
    "RowParallelLinear",
    "SparseAttentionConfigError",
    "TransformerConfig",
    "VocabParallelEmbedding",
    "VocabUtility",
    "broadcast_data",
    "causal_mask",
    "checkpoint",
    "clip_grad_norm",
    "copy_to_model_parallel_region",
    "destroy_model_parallel",
    "divide",
    "dropout",
    "ensure_divisibility",
    "fused_attention",
    "gather_from_model_parallel_region",
    "gelu",
    "get_cuda_rng_tracker",
    "get_data_parallel_group",
    "get_data_parallel_rank",
    "get_data_parallel_world_size",
    "get_model_parallel_group",
    "get_model_parallel_rank",
    "get_model_parallel_src_rank",
    "get_model_parallel_world_size",
    "initialize_model_parallel",
    "linear",
    "model_parallel_cuda_manual_seed",
    "model_parallel_is_initialized",
    "packed_linear_weights",
    "reduce_from_model_parallel_region",
    "sample_pivot_indices",
    "scaled_init_method",
    "scatter_to_model_parallel_region",
    "sparse_attention",
    "sparse_attention_inference",
    "split_tensor_along_last_dim",
    "standard_attention",
    "unscaled_init_method",
    "vocab_parallel_cross_entropy",
]
