"""``filling_sequence``: complete the negative positions of a sequence, sample by sample, on a KV cache."""

import argparse
import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

import mpu
from data_utils import layouts
from data_utils.unified_tokenizer import tokenizer_or_default
from generation.sampling import InvalidSlices, SamplingConfig, Tokenizer, check_batch_sizes, sample
from model import GPT2Model

NO_ROI2 = 100000  # the original's "no [ROI2] seen" offset
StepCallback = Callable[[int, int], None]  # (tokens generated so far, tokens to generate in all)


def position_ids(ids: Sequence[int], context_length: int, roi2: int) -> list[int]:
    """Position of every token of ``ids``: ``i``, or ``i - offset`` after the last ``[ROI2]`` of the context.

    This is the original inference layout: ``[ROI2]`` keeps its absolute index and the tokens after
    it restart at 1, 2, 3, … (training gave ``[ROI2]`` itself position 0; the mismatch is kept because the
    released super-resolution weights were used this way). A ``[ROI2]`` after ``context_length`` does not
    move the offset, as in the original.
    """
    offset = max((i for i in range(context_length) if ids[i] == roi2), default=NO_ROI2)
    return [i - offset if i > offset else i for i in range(len(ids))]


def batch_chunks(batch_size: int, max_inference_batch_size: int) -> list[int]:
    """Split ``batch_size`` samples into forwards of at most ``max_inference_batch_size``: 5, 2 → [2, 2, 1].

    The original required ``batch_size < max`` or divisibility; any combination works here.
    """
    check_batch_sizes(batch_size, max_inference_batch_size)
    full, rest = divmod(batch_size, max_inference_batch_size)
    return [max_inference_batch_size] * full + ([rest] if rest else [])


def filling_sequence(
    model: GPT2Model,
    seq: torch.Tensor | Sequence[int],
    args: SamplingConfig | argparse.Namespace,
    mems: None = None,
    invalid_slices: Iterable[slice] = (),
    **kwargs,
) -> torch.Tensor:
    """Fill the negative entries of ``seq`` by sampling; return ``args.batch_size`` rows ``[b, len(seq)]``.

    ``seq`` is 1-D: ids ≥ 0 are given, negative entries are generated (any negative value; the original's
    ``-n`` "n parallel samples" marks are not needed). The context, the prefix before the first negative,
    goes through the model once (batch 1, shared by all samples); then each generated position costs one
    forward over the tokens not yet fed (the sampled one, plus any given tokens just before it), all on a
    key/value cache. Positions follow :func:`position_ids`; the allowed ids follow :class:`InvalidSlices`,
    plus the ``invalid_slices`` given here (ignored by the original). ``args`` is a :class:`SamplingConfig`
    or, as in the original, the argparse namespace it is read from: sampling uses ``temperature``,
    ``top_k`` and ``top_p``, and the samples are produced in forwards of at most
    ``max_inference_batch_size`` (see :func:`batch_chunks`).

    Given tokens after generated ones are appended to *every* sample. The original first collapsed the
    batch to its single most likely sample there (``shrink_beams``, a leftover of a removed beam search),
    which silently returned copies of one sample; that bug is not reproduced.

    ``mems`` is kept for the original's signature only: the hidden-state memories it passed are replaced by
    the cache built here, so it must be None. Keyword options: ``tokenizer`` (default
    ``data_utils.get_tokenizer()``), ``generator`` (a ``torch.Generator`` for reproducible sampling),
    ``progress`` (a tqdm bar over generated tokens, off by default), ``on_step`` (called after every
    sampling step with the tokens generated so far and in all, counting every sample; an exception it
    raises stops the generation there, which is how a server cancels abandoned work), and classifier-free
    guidance: ``guidance_scale`` S (default 1, off) with ``unconditional``, the same sequence without its
    condition (default ``data_utils.layouts.drop_caption(seq)``, the text2image row without its caption).
    With S ≠ 1 both sequences run side by side on their own caches, and every step samples from
    :func:`guided_logits`; at S = 1 the unconditional sequence is never run. The model should be in eval
    mode.
    """
    tokenizer, generator, progress, on_step, guidance_scale, unconditional = _options(kwargs)
    args = SamplingConfig.of(args)
    if mems is not None:
        raise ValueError("filling_sequence keeps its own key/value cache; mems must be None.")
    device = model.word_embeddings.weight.device
    seq = torch.as_tensor(seq, dtype=torch.long, device=device)
    if seq.dim() != 1:
        raise ValueError(f"filling_sequence expects a 1-D sequence of ids, got shape {tuple(seq.shape)}.")
    ids = seq.tolist()
    context_length = _context_length(ids)
    chunks = batch_chunks(args.batch_size, args.max_inference_batch_size)
    if context_length == len(ids):
        return seq.expand(args.batch_size, -1).clone()
    if context_length == 0:
        raise ValueError("filling_sequence needs at least one given token before the first one to generate.")
    roi2 = tokenizer["[ROI2]"]
    streams = [_Stream.of(model, ids, context_length, roi2)]
    if guidance_scale != 1:
        if unconditional is None:
            unconditional = layouts.drop_caption(tokenizer, ids)
        streams.append(_Stream.unconditional(model, ids, context_length, unconditional, roi2))

    state = InvalidSlices(tokenizer, invalid_slices)
    for token in ids[:context_length]:
        state.update(token)
    num_generated = sum(token < 0 for token in ids)
    total = num_generated * args.batch_size
    with (
        torch.inference_mode(),
        mpu.packed_linear_weights(model),
        tqdm(total=total, disable=not progress, unit="token") as bar,
    ):
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            bar.update(count)
            if on_step is not None:
                on_step(done, total)

        first_logits = [stream.feed_context(model, state.allowed) for stream in streams]  # [1, allowed] each
        samples = []
        for number, size in enumerate(chunks):
            # every chunk extends its own copy of the contexts' caches; the last one takes the originals
            last = number == len(chunks) - 1
            samples.append(
                _fill_chunk(
                    model,
                    seq,
                    ids,
                    context_length,
                    [stream.for_chunk(size, copy_cache=not last) for stream in streams],
                    [logits.expand(size, -1).clone() for logits in first_logits],
                    guidance_scale,
                    copy.copy(state),
                    args,
                    generator,
                    advance,
                )
            )
    return torch.cat(samples)


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``unconditional + scale · (conditional − unconditional)``, any shape.

    Scale 1 is the conditional model alone, 0 the unconditional one; above 1 pushes the samples towards
    what the condition adds.
    """
    return unconditional + scale * (conditional - unconditional)


def _context_length(ids: Sequence[int]) -> int:
    """Index of the first negative (to-generate) entry of ``ids``; ``len(ids)`` when there is none."""
    return next((i for i, token in enumerate(ids) if token < 0), len(ids))


@dataclass
class _Stream:
    """One sequence fed to the model on its own key/value cache.

    The sequence is the one sampled (``shift`` 0) or guidance's unconditional one, whose context differs
    but whose tail (from the first generated position on) is the sampled sequence's: entry ``i`` of the
    sampled sequence is entry ``i - shift`` of this one, and each sampled token is fed to both.
    """

    ids: list[int]  # the context is ids[:context_length]
    context_length: int
    positions: torch.Tensor  # [len(ids)]
    shift: int
    cache: mpu.KVCache

    @classmethod
    def of(
        cls, model: GPT2Model, ids: list[int], context_length: int, roi2: int, shift: int = 0
    ) -> "_Stream":
        device = model.word_embeddings.weight.device
        positions = torch.tensor(position_ids(ids, context_length, roi2), device=device)  # [L]
        _check_positions(model, positions)
        return cls(ids, context_length, positions, shift, model.new_kv_cache(len(ids)))

    @classmethod
    def unconditional(
        cls, model: GPT2Model, ids: list[int], context_length: int, unconditional: Sequence[int], roi2: int
    ) -> "_Stream":
        """The stream of ``unconditional``, checked to share the generated tail of ``ids``."""
        other = [int(token) for token in unconditional]
        other_context = _context_length(other)
        tail = ids[context_length:]
        if other_context == 0 or len(other) - other_context != len(tail) or other[other_context:] != tail:
            raise ValueError(
                "The unconditional sequence of classifier-free guidance must end with the same tokens to "
                f"generate as the sequence ({len(tail)} from its first negative entry on) after a non-empty "
                "context of its own."
            )
        return cls.of(model, other, other_context, roi2, shift=context_length - other_context)

    def feed_context(self, model: GPT2Model, vocab_range: tuple[int, int]) -> torch.Tensor:
        """Run the context (batch 1) into the cache; the fp32 logits ``[1, allowed]`` of what follows it."""
        device = self.positions.device
        context = torch.tensor(self.ids[: self.context_length], device=device)
        return self._logits(model, context[None], 0, self.context_length, vocab_range)

    def for_chunk(self, size: int, copy_cache: bool) -> "_Stream":
        """This stream for a chunk of ``size`` samples, on a copy of the context's cache if asked."""
        cache = copy.deepcopy(self.cache) if copy_cache else self.cache
        return _Stream(self.ids, self.context_length, self.positions, self.shift, cache.expand_batch(size))

    def feed(
        self, model: GPT2Model, tokens: torch.Tensor, start: int, stop: int, vocab_range: tuple[int, int]
    ) -> torch.Tensor:
        """Feed ``tokens[:, start:stop]`` (indices of the sampled sequence); fp32 logits ``[b, allowed]``."""
        return self._logits(model, tokens[:, start:stop], start - self.shift, stop - self.shift, vocab_range)

    def _logits(
        self, model: GPT2Model, tokens: torch.Tensor, start: int, stop: int, vocab_range: tuple[int, int]
    ) -> torch.Tensor:
        positions = self.positions[start:stop].expand(tokens.size(0), -1)
        logits = model.forward_cached(tokens, positions, self.cache, last_only=True, vocab_range=vocab_range)
        return logits[:, -1].float()  # fp32 sampling whatever the model's dtype


def _fill_chunk(
    model: GPT2Model,
    seq: torch.Tensor,
    ids: list[int],
    context_length: int,
    streams: list[_Stream],
    logits: list[torch.Tensor],
    guidance_scale: float,
    state: InvalidSlices,
    args: SamplingConfig,
    generator: torch.Generator | None,
    advance: Callable[[int], None],
) -> torch.Tensor:
    """Generate one chunk of samples; each stream's cache holds its context, ``logits`` ``[b, allowed]``.

    ``logits`` (one per stream) predict the first generated token. With one stream its logits are sampled
    as they are; with two (guidance), their :func:`guided_logits`. ``advance(n)`` is called after each
    step with the number of tokens it generated.
    """
    size = logits[0].size(0)
    tokens = seq.repeat(size, 1)  # [b, L]; negative entries are overwritten as they are sampled
    fed = context_length  # tokens[:, :fed] are in the caches
    first_id = state.allowed[0]  # the id of logits[:, 0]
    for index in range(context_length, len(ids)):
        if ids[index] >= 0:
            state.update(ids[index])
            continue
        if fed < index:
            first_id = state.allowed[0]
            logits = [stream.feed(model, tokens, fed, index, state.allowed) for stream in streams]
            fed = index
        step_logits = logits[0] if len(logits) == 1 else guided_logits(*logits, guidance_scale)
        state.mask_(step_logits, first_id)
        sampled, _ = sample(step_logits, args.temperature, args.top_k, args.top_p, generator)
        tokens[:, index] = sampled + first_id
        advance(size)
    return tokens


def _options(
    kwargs: dict,
) -> tuple[Tokenizer, torch.Generator | None, bool, StepCallback | None, float, Sequence[int] | None]:
    """The keyword options of :func:`filling_sequence`; unknown ones are an error (catches typos)."""
    options = {"tokenizer", "generator", "progress", "on_step", "guidance_scale", "unconditional"}
    unknown = set(kwargs) - options
    if unknown:
        raise TypeError(f"filling_sequence got unexpected keyword arguments: {', '.join(sorted(unknown))}.")
    return (
        tokenizer_or_default(kwargs.get("tokenizer")),
        kwargs.get("generator"),
        bool(kwargs.get("progress", False)),
        kwargs.get("on_step"),
        float(kwargs.get("guidance_scale", 1.0)),
        kwargs.get("unconditional"),
    )


def _check_positions(model: GPT2Model, positions: torch.Tensor) -> None:
    available = model.transformer.position_embeddings.num_embeddings
    needed = int(positions.max()) + 1
    if needed > available:
        raise ValueError(
            f"The sequence needs {needed} positions but the model has {available} position embeddings "
            "(--max-position-embeddings)."
        )
