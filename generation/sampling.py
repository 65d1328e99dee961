"""One sampling step: temperature, top-k / top-p filters, the allowed-id state machine, multinomial draw.

The original's order is kept: divide by the temperature, forbid the invalid ids, filter
with top-k and top-p, softmax, draw. ``top_k = top_p = 0`` is plain ancestral sampling (not greedy).
"""

import argparse
import importlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from common.errors import InputError


class Tokenizer(Protocol):
    """What generation needs from a tokenizer (``data_utils.UnifiedTokenizer`` provides it)."""

    num_image_tokens: int

    def __len__(self) -> int: ...
    def __getitem__(self, command_token: str) -> int: ...


class SamplingOptionError(InputError):
    """A temperature, top-k, top-p or batch size that sampling cannot use."""


def check_sampling_options(temperature: float, top_k: int, top_p: float) -> None:
    """Refuse sampling settings that would fail mid-run or be silently meaningless, naming the flag.

    Temperature 0 is refused rather than read as greedy (dividing by it gives inf/nan probabilities);
    ``top_k = 1`` is greedy decoding.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise SamplingOptionError(
            f"--temperature must be a positive number, got {temperature:g} "
            "(0 is not greedy decoding: pass --top_k 1 for that)"
        )
    if top_k < 0:
        raise SamplingOptionError(f"--top_k must be 0 (off) or a positive number of tokens, got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise SamplingOptionError(f"--top_p must be between 0 (off) and 1, got {top_p:g}")


def check_batch_sizes(batch_size: int, max_inference_batch_size: int) -> None:
    """Refuse a batch of no samples, or forwards of none, naming both flags."""
    if batch_size < 1 or max_inference_batch_size < 1:
        raise SamplingOptionError(
            f"--batch-size ({batch_size}) and --max-inference-batch-size ({max_inference_batch_size}) "
            "must both be at least 1."
        )


@dataclass(frozen=True)
class SamplingConfig:
    """How generation samples: the filters of :func:`sample` and how many samples, in forwards of how many.

    Built once from the command line (:meth:`of`) instead of reading and copying the argparse namespace
    deep inside the sampler. The settings are checked when it is built (:class:`SamplingOptionError`), so
    a bad one stops a run at start-up rather than at its first sample.
    """

    temperature: float
    top_k: int
    top_p: float
    batch_size: int
    max_inference_batch_size: int

    def __post_init__(self) -> None:
        check_sampling_options(self.temperature, self.top_k, self.top_p)
        check_batch_sizes(self.batch_size, self.max_inference_batch_size)

    @classmethod
    def of(cls, settings: "SamplingConfig | argparse.Namespace") -> "SamplingConfig":
        """``settings`` itself, or the config of an argparse namespace (the original's ``args``)."""
        if isinstance(settings, cls):
            return settings
        return cls(
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            batch_size=settings.batch_size,
            max_inference_batch_size=settings.max_inference_batch_size,
        )


def top_k_logits(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0, filter_value: float = -float("inf")
) -> torch.Tensor:
    """Set the logits ``[b, V]`` outside the top-k / top-p nucleus of each row to ``filter_value``.

    Top-k keeps every logit ≥ the row's k-th largest (ties at the threshold are kept). Top-p keeps the
    smallest prefix of the row's descending-sorted distribution whose cumulative probability exceeds
    ``top_p`` (a token is dropped when the mass *before* it already exceeds ``top_p``), so the most likely
    token always survives. Both filters may be combined (top-k first). Works row by row for any batch
    size: fixes the original's top-p, which flattened the batch and was only right for batch 1.
    Modifies ``logits`` in place and returns it.
    """
    if top_k > 0:
        kth_largest = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # [b, 1]
        logits.masked_fill_(logits < kth_largest, filter_value)
    if top_p > 0.0:
        sorted_logits, sorted_indices = torch.sort(logits, dim=-1, descending=True)  # [b, V]
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        remove_sorted[:, 1:] = cumulative[:, :-1] > top_p
        remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
        logits.masked_fill_(remove, filter_value)
    return logits


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one id per row of ``logits`` ``[b, V]`` (forbidden ids already at −inf).

    Returns ``(ids [b], log_probs [b])``: indices into the last dimension and their log-probability under
    the distribution actually sampled (tempered and filtered). ``logits`` is modified in place.
    """
    if temperature != 1.0:
        logits.div_(temperature)
    log_probs = F.log_softmax(top_k_logits(logits, top_k, top_p), dim=-1)  # [b, V]
    ids = torch.multinomial(log_probs.exp(), 1, generator=generator)  # [b, 1]
    return ids.squeeze(1), log_probs.gather(1, ids).squeeze(1)


class InvalidSlices:
    """Which ids may be generated at the next position: the original's invalid-slice state machine.

    With I = ``tokenizer.num_image_tokens``, N = ``len(tokenizer)`` and C the first command id:

    * text (initial state): no image ids, allowed ``[I, N)``;
    * after a given ``[BOI1]``/``[BOI2]``: only image ids, allowed ``[0, I)``;
    * after a given ``[EOI1]``/``[EOI2]``: no image and no command ids, allowed ``[I, C)``.

    Every state is one contiguous range, so the model need only project onto it
    (``forward_cached(vocab_range=...)``). Ids ≥ N (the model's vocabulary padding, never trained or
    decodable) are never allowed; the original allowed them in the text state. ``extra`` slices of
    absolute ids (contiguous, step ignored; the ``invalid_slices`` argument the original ignored) are
    forbidden in every state.
    Only *given* tokens move the state, as in the original: a generated ``[BOI1]`` does not.
    """

    def __init__(self, tokenizer: Tokenizer, extra: Iterable[slice] = ()):
        image, total, command = tokenizer.num_image_tokens, len(tokenizer), tokenizer["[PAD]"]
        self._text_range = (image, total)
        self._transitions = {
            tokenizer["[BOI1]"]: (0, image),
            tokenizer["[BOI2]"]: (0, image),
            tokenizer["[EOI1]"]: (image, command),
            tokenizer["[EOI2]"]: (image, command),
        }
        self.extra = list(extra)
        self.allowed = self._text_range

    def update(self, token: int) -> None:
        """Move the state past a given token."""
        self.allowed = self._transitions.get(int(token), self.allowed)

    def slices(self) -> list[slice]:
        """The forbidden ids of the current state as slices of absolute ids (the original's form)."""
        low, high = self.allowed
        return [slice(0, low), slice(high, None), *self.extra]

    def mask_(self, logits: torch.Tensor, first_id: int = 0) -> torch.Tensor:
        """Set forbidden entries of ``logits`` ``[..., n]`` (covering ids ``first_id..first_id+n-1``) to −inf.

        In place; returns ``logits``.
        """
        last_id = first_id + logits.size(-1)
        for forbidden in self.slices():
            start = max(forbidden.start or 0, first_id)
            stop = min(last_id if forbidden.stop is None else forbidden.stop, last_id)
            if start < stop:
                logits[..., start - first_id : stop - first_id] = -float("inf")
        return logits


# The original's generation.sampling also held the sequence filler, its batch helper and post-selection
# scoring. They live in their own modules, which import this one, so they are looked up on first use.
_MOVED = {
    "filling_sequence": "generation.filling",
    "get_batch": "generation.batch",
    "inverse_prompt_score": "generation.scoring",
}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
