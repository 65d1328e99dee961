"""Sampling from CogView: one sampling step, ``filling_sequence``, super-resolution, post-selection."""

from generation.batch import get_batch
from generation.filling import batch_chunks, filling_sequence, position_ids
from generation.magnify import magnify, magnify_windows
from generation.sampling import InvalidSlices, SamplingConfig, sample, top_k_logits
from generation.scoring import inverse_prompt_score, text_start

__all__ = [
    "InvalidSlices",
    "SamplingConfig",
    "batch_chunks",
    "filling_sequence",
    "get_batch",
    "inverse_prompt_score",
    "magnify",
    "magnify_windows",
    "position_ids",
    "sample",
    "text_start",
    "top_k_logits",
]
