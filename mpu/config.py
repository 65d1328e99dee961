"""The CogView transformer's sizes and options as one frozen record, built once and passed down.

Every default lives here, once. The original's positional constructors (``GPT2ParallelTransformer(48,
2560, 40, ...)``, ``GPT2Model(...)``) stay as thin front ends: :func:`bind_call` names their arguments in
the original's order and the config is built from the names.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes and options of the CogView transformer, for every layer alike.

    ``max_memory_length``: positions of the original's hidden-state mems to keep (0 = none; generation
    uses a key/value cache instead). ``query_window``, ``key_window_times`` and ``num_pivot`` shape sparse
    attention (``--is-sparse``). ``pb_relax_alpha``: the paper's PB-relax attention scale (None = plain
    softmax, as the released weights were trained). ``use_fused_attention``: ``scaled_dot_product_attention``
    where it is exact.
    """

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    max_sequence_length: int
    max_memory_length: int
    embedding_dropout_prob: float
    attention_dropout_prob: float
    output_dropout_prob: float
    checkpoint_activations: bool
    checkpoint_num_layers: int = 1
    layernorm_epsilon: float = 1.0e-5
    init_method_std: float = 0.02
    use_scaled_init_for_output_weights: bool = True
    query_window: int = 128
    key_window_times: int = 6
    num_pivot: int = 768
    pb_relax_alpha: float | None = None
    use_fused_attention: bool = True


# The original's positional order of GPT2ParallelTransformer's arguments.
TRANSFORMER_POSITIONAL = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "max_sequence_length",
    "max_memory_length",
    "embedding_dropout_prob",
    "attention_dropout_prob",
    "output_dropout_prob",
    "checkpoint_activations",
    "checkpoint_num_layers",
    "layernorm_epsilon",
    "init_method_std",
    "use_scaled_init_for_output_weights",
    "query_window",
    "key_window_times",
    "num_pivot",
)


def bind_call(
    function: str, positional: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Name the positional ``args`` of a call to ``function`` by ``positional`` and merge ``kwargs``.

    Raises the TypeError Python would for too many arguments or one given twice.
    """
    if len(args) > len(positional):
        raise TypeError(
            f"{function}() takes at most {len(positional)} positional arguments ({len(args)} given)"
        )
    values = dict(zip(positional, args, strict=False))
    twice = sorted(set(values) & set(kwargs))
    if twice:
        raise TypeError(f"{function}() got multiple values for argument {twice[0]!r}")
    return {**values, **kwargs}
