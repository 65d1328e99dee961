"""The CogView transformer: Sandwich-LN layers with PB-relax LayerNorms, mems, and a KV cache.

Shapes: hidden states are ``[b, s, h]`` throughout (the original's layout). The faithful path
(``forward(..., *mems)``) keeps the original's "mems": every layer's input hidden states, from
which keys and values are recomputed each step. The fast path (``forward_cached``) keeps keys and
values instead; both give the same outputs.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GPT2ParallelSelfAttention, causal_mask
from .config import TRANSFORMER_POSITIONAL, TransformerConfig, bind_call
from .dropout import Dropout
from .kv_cache import KVCache
from .layernorm import LayerNorm
from .layers import ColumnParallelLinear, InitMethod, RowParallelLinear
from .random import checkpoint
from .sparse_attention import sample_pivot_indices


def gelu(x: torch.Tensor) -> torch.Tensor:
    """``0.5 x (1 + tanh(0.7978845608 (x + 0.044715 x^3)))``, the tanh GeLU the weights were trained with."""
    return F.gelu(x, approximate="tanh")


def unscaled_init_method(sigma: float) -> InitMethod:
    """N(0, sigma) initialisation; none for a meta tensor (a model built to be loaded holds no values)."""

    def init_(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_meta:
            return tensor
        return nn.init.normal_(tensor, mean=0.0, std=sigma)

    return init_


def scaled_init_method(sigma: float, num_layers: int) -> InitMethod:
    """N(0, sigma / sqrt(2 num_layers)) for the output projections of the residual branches."""
    return unscaled_init_method(sigma / math.sqrt(2.0 * num_layers))


class GPT2ParallelMLP(nn.Module):
    """``h -> 4h`` (column-parallel), tanh GeLU, ``4h -> h`` (row-parallel), dropout."""

    def __init__(
        self,
        hidden_size: int,
        output_dropout_prob: float,
        init_method: InitMethod,
        output_layer_init_method: InitMethod | None = None,
    ):
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(
            hidden_size, 4 * hidden_size, gather_output=False, init_method=init_method
        )
        self.dense_4h_to_h = RowParallelLinear(
            4 * hidden_size,
            hidden_size,
            input_is_parallel=True,
            init_method=output_layer_init_method or init_method,
        )
        self.dropout = Dropout(output_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense_4h_to_h(gelu(self.dense_h_to_4h(hidden_states))))


class GPT2ParallelTransformerLayer(nn.Module):
    """Sandwich-LN: a LayerNorm at both ends of each residual branch.

    ``h = x + LN3(Attn(LN1(x)))``, ``out = h + LN4(MLP(LN2(h)))``.
    """

    def __init__(
        self,
        config: TransformerConfig,
        init_method: InitMethod,
        output_layer_init_method: InitMethod | None = None,
    ):
        super().__init__()
        hidden_size, epsilon = config.hidden_size, config.layernorm_epsilon
        self.input_layernorm = LayerNorm(hidden_size, eps=epsilon)
        self.attention = GPT2ParallelSelfAttention(config, init_method, output_layer_init_method)
        self.post_attention_layernorm = LayerNorm(hidden_size, eps=epsilon)
        self.third_layernorm = LayerNorm(hidden_size, eps=epsilon)
        self.fourth_layernorm = LayerNorm(hidden_size, eps=epsilon)
        self.mlp = GPT2ParallelMLP(
            hidden_size, config.output_dropout_prob, init_method, output_layer_init_method
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        visible: torch.Tensor | None,
        mem: torch.Tensor | None = None,
        **attention_kwargs,
    ) -> torch.Tensor:
        normed = self.input_layernorm(hidden_states)
        normed_mem = (
            self.input_layernorm(mem) if mem is not None else None
        )  # normalised on its own, as released
        attention_output = self.attention(normed, visible, mem=normed_mem, **attention_kwargs)
        hidden_states = hidden_states + self.third_layernorm(attention_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.fourth_layernorm(mlp_output)


def visibility_from_mask(
    attention_mask: torch.Tensor | int, query_length: int, memory_length: int, device: torch.device
) -> torch.Tensor | None:
    """Turn the original's ``attention_mask`` into a bool mask ``[*, 1, sq, sk]`` or ``None`` (causal).

    An int (or one-element tensor) ``sep`` means: memory visible, causal inside the query block, and
    the first ``sep`` query-block columns visible to every query. A tensor mask holds 1 for visible
    and 0 for hidden, with ``sk = memory_length + sq`` columns; one that is exactly causal gives ``None``.
    """
    if isinstance(attention_mask, torch.Tensor) and attention_mask.numel() == 1:
        attention_mask = int(attention_mask.item())
    if isinstance(attention_mask, int):
        if attention_mask == 0:
            return None
        visible = causal_mask(query_length, memory_length + query_length, device)
        visible[:, memory_length : memory_length + attention_mask] = True
        return visible.view(1, 1, query_length, memory_length + query_length)
    if attention_mask.size(-1) != memory_length + query_length or attention_mask.size(-2) != query_length:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected [..., {query_length}, "
            f"{memory_length + query_length}] for {query_length} queries and {memory_length} memory positions"
        )
    visible = attention_mask > 0.5
    causal = causal_mask(query_length, memory_length + query_length, device)
    # The training batch's full ``tril`` is the plain causal case: ``None`` lets attention skip the mask
    # (SDPA's causal kernels; on the CPU with dropout, the blocked path that skips hidden keys).
    return None if torch.equal(visible, causal.expand_as(visible)) else visible


class GPT2ParallelTransformer(nn.Module):
    """Position embeddings, ``num_layers`` Sandwich-LN layers, and a final PB-relax LayerNorm.

    Built from a :class:`TransformerConfig`, or with the original's arguments (positional in the
    original's order, or by name), from which the config is made.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        if len(args) == 1 and not kwargs and isinstance(args[0], TransformerConfig):
            config = args[0]
        else:
            config = TransformerConfig(
                **bind_call("GPT2ParallelTransformer", TRANSFORMER_POSITIONAL, args, kwargs)
            )
        self.config = config
        self.max_memory_length = config.max_memory_length
        self.checkpoint_activations = config.checkpoint_activations
        self.checkpoint_num_layers = config.checkpoint_num_layers
        self.num_pivot = config.num_pivot
        init_method = unscaled_init_method(config.init_method_std)
        output_layer_init_method = (
            scaled_init_method(config.init_method_std, config.num_layers)
            if config.use_scaled_init_for_output_weights
            else init_method
        )
        positions = torch.empty(config.max_sequence_length, config.hidden_size)
        self.position_embeddings = nn.Embedding(*positions.shape, _weight=positions)
        if not positions.is_meta:  # nn.Embedding's own draw, kept so that a seed gives the same weights
            self.position_embeddings.reset_parameters()
        init_method(self.position_embeddings.weight)
        self.embedding_dropout = Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList(
            GPT2ParallelTransformerLayer(config, init_method, output_layer_init_method)
            for _ in range(config.num_layers)
        )
        self.final_layernorm = LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)

    def _embed(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding_dropout(hidden_states + self.position_embeddings(position_ids))

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | int,
        txt_indices_bool: torch.Tensor | None = None,
        img_indices_bool: torch.Tensor | None = None,
        is_sparse: int = 0,
        *mems: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The original's forward: returns ``(final_layernorm(x), *new_mems)``.

        ``mems`` (``num_layers + 1`` tensors ``[b, mem_len, h]``, or none) are the layer inputs of earlier
        positions; new mems are returned only when ``max_memory_length > 0``.
        """
        if mems and len(mems) != len(self.layers) + 1:
            raise ValueError(f"expected {len(self.layers) + 1} mems (layers + 1), got {len(mems)}")
        query_length = hidden_states.size(1)
        memory_length = mems[0].size(1) if mems else 0
        visible = visibility_from_mask(attention_mask, query_length, memory_length, hidden_states.device)
        hidden_states = self._embed(hidden_states, position_ids)

        keep_mems = self.max_memory_length > 0
        layer_inputs = [hidden_states.detach()] if keep_mems else []
        chunk = self.checkpoint_num_layers
        for start in range(0, len(self.layers), chunk):
            end = min(start + chunk, len(self.layers))
            pivot_idx = None
            if is_sparse == 1:  # pivots are resampled for every chunk of layers, as in the original
                pivot_idx = sample_pivot_indices(txt_indices_bool, img_indices_bool, self.num_pivot)
            run = self._layers_runner(
                start, end, visible, is_sparse, pivot_idx, txt_indices_bool, img_indices_bool, keep_mems
            )
            chunk_mems = mems[start:end] if mems else ()
            if self.checkpoint_activations and self.training and torch.is_grad_enabled():
                outputs = checkpoint(run, hidden_states, *chunk_mems)
            else:
                outputs = run(hidden_states, *chunk_mems)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            hidden_states = outputs[-1]
            if keep_mems:
                layer_inputs.extend(o.detach() for o in outputs)
        output = self.final_layernorm(hidden_states)
        if not keep_mems:
            return (output,)
        return (output, *self.update_mems(layer_inputs, mems))

    def _layers_runner(
        self,
        start: int,
        end: int,
        visible,
        is_sparse,
        pivot_idx,
        txt_indices_bool,
        img_indices_bool,
        keep_mems: bool,
    ) -> Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]:
        def run(hidden_states: torch.Tensor, *chunk_mems: torch.Tensor):
            outputs = []
            for offset, layer in enumerate(self.layers[start:end]):
                mem = chunk_mems[offset] if chunk_mems else None
                hidden_states = layer(
                    hidden_states,
                    visible,
                    mem=mem,
                    is_sparse=is_sparse,
                    pivot_idx=pivot_idx,
                    txt_indices_bool=txt_indices_bool,
                    img_indices_bool=img_indices_bool,
                )
                outputs.append(hidden_states)
            return tuple(outputs) if keep_mems else hidden_states

        return run

    def update_mems(self, hiddens: list[torch.Tensor], mems: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Append new layer inputs to the mems, keeping at most ``max_memory_length`` positions."""
        query_length = hiddens[0].size(1)
        memory_length = mems[0].size(1) if mems else 0
        new_length = min(self.max_memory_length, memory_length + query_length)
        if new_length <= query_length or not mems:
            return [h[:, -new_length:] for h in hiddens]
        keep = new_length - query_length
        return [torch.cat((m[:, -keep:], h), dim=1) for m, h in zip(mems, hiddens, strict=True)]

    def forward_cached(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        kv_cache: KVCache,
        attention_mask: torch.Tensor | int = 0,
    ) -> torch.Tensor:
        """Run new positions ``[b, sq, h]`` after those in ``kv_cache`` (extending it); final LN output."""
        visible = visibility_from_mask(
            attention_mask, hidden_states.size(1), kv_cache.length, hidden_states.device
        )
        hidden_states = self._embed(hidden_states, position_ids)
        for layer, layer_cache in zip(self.layers, kv_cache.layers, strict=True):
            hidden_states = layer(hidden_states, visible, kv_cache=layer_cache)
        return self.final_layernorm(hidden_states)
