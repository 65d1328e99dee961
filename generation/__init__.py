"""Sampling from CogView: one sampling step, ``filling_sequence``, super-resolution, post-selection (§8)."""

from generation.filling import batch_chunks, filling_sequence, position_ids
from generation.magnify import magnify, magnify_windows
from generation.sampling import InvalidSlices, sample, top_k_logits
from generation.scoring import inverse_prompt_score, text_start

__all__ = [
    "InvalidSlices",
    "batch_chunks",
    "filling_sequence",
    "inverse_prompt_score",
    "magnify",
    "magnify_windows",
    "position_ids",
    "sample",
    "text_start",
    "top_k_logits",
]
