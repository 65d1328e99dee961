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
    With S ≠ 1 both sequences run as one batch on one cache (the shorter context left-padded and masked),
    and every step samples from :func:`guided_logits`; at S = 1 the unconditional sequence is never run.
    The model should be in eval mode.
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
    if guidance_scale == 1:
        unconditional = None
    elif unconditional is None:
        unconditional = layouts.drop_caption(tokenizer, ids)
    streams = _Streams.of(model, ids, context_length, roi2, unconditional)

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

        first_logits = streams.feed_context(model, state.allowed)  # [groups, allowed]
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
                    streams.for_chunk(size, copy_cache=not last),
                    first_logits.repeat_interleave(size, dim=0),
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
class _Streams:
    """The sampled sequence and, with guidance, its unconditional twin: groups of rows on one cache.

    Group 0 is the sampled sequence; group 1 (guidance only) is the unconditional sequence, whose context
    differs but whose tail (from the first generated position on) is the sampled one's. Running both
    groups as one batch halves the forwards per step, which is what a small model's decoding step costs
    on the CPU. Their contexts may differ in length, so each is left-padded to ``width`` cache slots: the
    padding slots are hidden from every query by ``visible``, and the tails line up, slot ``i + offset``
    holding token ``i`` of the sampled sequence in every group. Masked keys get probability 0, so every
    row attends to exactly its own sequence, as it would alone (up to rounding, and PB-relax's
    max, which a LayerNorm takes over the whole batch).
    """

    contexts: list[list[int]]  # each group's context, unpadded
    width: int  # cache slots taken by the (left-padded) contexts
    offset: int  # the cache slot of the sampled sequence's token i is i + offset
    positions: torch.Tensor  # [groups * rows, width + tail]: the position fed in each cache slot
    visible: torch.Tensor | None  # [groups * rows, 1, 1, width + tail] bool; None without padding
    cache: mpu.KVCache

    @classmethod
    def of(
        cls,
        model: GPT2Model,
        ids: list[int],
        context_length: int,
        roi2: int,
        unconditional: Sequence[int] | None = None,
    ) -> "_Streams":
        """The stream of ``ids``, with the group of ``unconditional`` (guidance) when it is given."""
        sequences = [ids]
        if unconditional is not None:
            sequences.append(_checked_unconditional(ids, context_length, unconditional))
        contexts = [sequence[: _context_length(sequence)] for sequence in sequences]
        width = max(len(context) for context in contexts)
        tail = len(ids) - context_length
        device = model.word_embeddings.weight.device
        pads = [width - len(context) for context in contexts]
        rows = [
            [0] * pad + position_ids(sequence, len(context), roi2)
            for sequence, context, pad in zip(sequences, contexts, pads, strict=True)
        ]
        positions = torch.tensor(rows, device=device)  # [groups, width + tail]
        _check_positions(model, positions)
        visible = None
        if any(pads):
            slots = torch.arange(width + tail, device=device)
            first_real = torch.tensor(pads, device=device)
            visible = (slots[None] >= first_real[:, None])[:, None, None]  # [groups, 1, 1, slots]
        cache = model.new_kv_cache(width + tail)
        return cls(contexts, width, width - context_length, positions, visible, cache)

    @property
    def groups(self) -> int:
        return len(self.contexts)

    def feed_context(self, model: GPT2Model, vocab_range: tuple[int, int]) -> torch.Tensor:
        """Run the contexts (one row per group) into the cache; fp32 logits ``[groups, allowed]`` after them.

        A padding slot's query sees only itself, so that no row of the softmax is empty; what it computes
        is never seen by a real token.
        """
        device = self.positions.device
        padded = [[context[0]] * (self.width - len(context)) + context for context in self.contexts]
        tokens = torch.tensor(padded, device=device)  # [groups, width]
        mask = 0
        if self.visible is not None:
            keys = self.visible[..., : self.width]  # [groups, 1, 1, width]
            itself = torch.eye(self.width, dtype=torch.bool, device=device)
            mask = (keys | itself) & mpu.causal_mask(self.width, self.width, device)
        return self._logits(model, tokens, 0, self.width, mask, vocab_range)

    def for_chunk(self, size: int, copy_cache: bool) -> "_Streams":
        """These streams for ``size`` samples (``size`` rows per group), on a copy of the cache if asked."""
        cache = copy.deepcopy(self.cache) if copy_cache else self.cache
        rows = torch.arange(self.groups, device=self.positions.device).repeat_interleave(size)
        return _Streams(
            self.contexts,
            self.width,
            self.offset,
            self.positions.index_select(0, rows),
            None if self.visible is None else self.visible.index_select(0, rows),
            cache.index_batch(rows),
        )

    def feed(
        self, model: GPT2Model, tokens: torch.Tensor, start: int, stop: int, vocab_range: tuple[int, int]
    ) -> torch.Tensor:
        """Feed ``tokens[:, start:stop]`` (``b`` rows) to every group: fp32 logits ``[groups·b, allowed]``.

        Group g's rows are ``g·b … g·b + b - 1``.
        """
        new = tokens[:, start:stop].repeat(self.groups, 1)
        first, last = start + self.offset, stop + self.offset
        mask = 0
        if self.visible is not None:
            mask = self.visible[..., :last] & mpu.causal_mask(last - first, last, tokens.device)
        return self._logits(model, new, first, last, mask, vocab_range)

    def _logits(
        self,
        model: GPT2Model,
        tokens: torch.Tensor,
        first: int,
        last: int,
        mask: torch.Tensor | int,
        vocab_range: tuple[int, int],
    ) -> torch.Tensor:
        positions = self.positions[:, first:last]
        logits = model.forward_cached(
            tokens, positions, self.cache, mask, last_only=True, vocab_range=vocab_range
        )
        return logits[:, -1].float()  # fp32 sampling whatever the model's dtype


def _checked_unconditional(ids: list[int], context_length: int, unconditional: Sequence[int]) -> list[int]:
    """``unconditional`` as ints, checked to end with the generated tail of ``ids`` after its own context."""
    other = [int(token) for token in unconditional]
    other_context = _context_length(other)
    tail = ids[context_length:]
    if other_context == 0 or len(other) - other_context != len(tail) or other[other_context:] != tail:
        raise ValueError(
            "The unconditional sequence of classifier-free guidance must end with the same tokens to "
            f"generate as the sequence ({len(tail)} from its first negative entry on) after a non-empty "
            "context of its own."
        )
    return other


def _fill_chunk(
    model: GPT2Model,
    seq: torch.Tensor,
    ids: list[int],
    context_length: int,
    streams: _Streams,
    logits: torch.Tensor,
    guidance_scale: float,
    state: InvalidSlices,
    args: SamplingConfig,
    generator: torch.Generator | None,
    advance: Callable[[int], None],
) -> torch.Tensor:
    """Generate one chunk of ``b`` samples; the streams' cache holds the contexts.

    ``logits`` ``[groups·b, allowed]`` (``b`` rows per group) predict the first generated token. With one
    group they are sampled as they are; with two (guidance), their :func:`guided_logits`. ``advance(n)``
    is called after each step with the number of tokens it generated.
    """
    size = logits.size(0) // streams.groups
    tokens = seq.repeat(size, 1)  # [b, L]; negative entries are overwritten as they are sampled
    fed = context_length  # tokens[:, :fed] are in the caches
    first_id = state.allowed[0]  # the id of logits[:, 0]
    for index in range(context_length, len(ids)):
        if ids[index] >= 0:
            state.update(ids[index])
            continue
        if fed < index:
            first_id = state.allowed[0]
            logits = streams.feed(model, tokens, fed, index, state.allowed)
            fed = index
        step_logits = (
            logits if streams.groups == 1 else guided_logits(logits[:size], logits[size:], guidance_scale)
        )
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
