"""``GPT2Config``: everything ``GPT2Model`` is built from, as one frozen record.

``GPT2Config.from_args`` is the one place that maps the command line's size arguments onto the model, so
generation, training and the tools build the same model from the same flags.
"""

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mpu.attention import PB_RELAX_ALPHA
from mpu.config import TransformerConfig, bind_call

# The original's positional order of GPT2Model's arguments.
GPT2_POSITIONAL = (
    "num_layers",
    "vocab_size",
    "hidden_size",
    "num_attention_heads",
    "embedding_dropout_prob",
    "attention_dropout_prob",
    "output_dropout_prob",
    "max_sequence_length",
    "max_memory_length",
    "checkpoint_activations",
    "checkpoint_num_layers",
    "parallel_output",
    "query_window",
    "key_window_times",
    "num_pivot",
)


@dataclass(frozen=True)
class GPT2Config:
    """The vocabulary (already padded for model parallelism), the transformer, and the output head.

    ``parallel_output``: logits stay split over the model-parallel ranks (training, with the vocab-parallel
    cross entropy); False gathers them (generation).
    """

    vocab_size: int
    transformer: TransformerConfig
    parallel_output: bool = True

    @classmethod
    def from_call(cls, args: Sequence[Any], kwargs: Mapping[str, Any]) -> "GPT2Config":
        """The config of the original's ``GPT2Model(...)`` call, positional or by name.

        Keyword-only extras: ``pb_relax_attention`` (bool: the paper's α = 32 attention) and
        ``use_fused_attention``.
        """
        values = bind_call("GPT2Model", GPT2_POSITIONAL, args, kwargs)
        model = {name: values.pop(name) for name in ("vocab_size", "parallel_output") if name in values}
        if values.pop("pb_relax_attention", False):
            values["pb_relax_alpha"] = PB_RELAX_ALPHA
        return cls(transformer=TransformerConfig(**values), **model)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, vocab_size: int, *, parallel_output: bool = True, **changes: Any
    ) -> "GPT2Config":
        """The model the size arguments of ``arguments.py`` describe, with ``vocab_size`` padded rows.

        ``changes`` replace transformer fields, e.g. ``max_memory_length=0`` for generation.
        """
        transformer = TransformerConfig(
            num_layers=args.num_layers,
            hidden_size=args.hidden_size,
            num_attention_heads=args.num_attention_heads,
            max_sequence_length=args.max_position_embeddings,
            max_memory_length=args.max_memory_length,
            embedding_dropout_prob=args.hidden_dropout,
            attention_dropout_prob=args.attention_dropout,
            output_dropout_prob=args.hidden_dropout,
            checkpoint_activations=args.checkpoint_activations,
            checkpoint_num_layers=args.checkpoint_num_layers,
            query_window=args.query_window,
            key_window_times=args.key_window_times,
            num_pivot=args.num_pivot,
            pb_relax_alpha=PB_RELAX_ALPHA if args.pb_relax_attention else None,
        )
        return cls(vocab_size, dataclasses.replace(transformer, **changes), parallel_output)
