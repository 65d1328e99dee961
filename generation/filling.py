"""``filling_sequence``: complete the negative positions of a sequence, sample by sample, on a KV cache."""

import argparse
import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from tqdm import tqdm

import mpu
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
    ``progress`` (a tqdm bar over generated tokens, off by default) and ``on_step`` (called after every
    sampling step with the tokens generated so far and in all, counting every sample; an exception it
    raises stops the generation there, which is how a server cancels abandoned work). The model should be
    in eval mode.
    """
    tokenizer, generator, progress, on_step = _options(kwargs)
    args = SamplingConfig.of(args)
    if mems is not None:
        raise ValueError("filling_sequence keeps its own key/value cache; mems must be None.")
    device = model.word_embeddings.weight.device
    seq = torch.as_tensor(seq, dtype=torch.long, device=device)
    if seq.dim() != 1:
        raise ValueError(f"filling_sequence expects a 1-D sequence of ids, got shape {tuple(seq.shape)}.")
    ids = seq.tolist()
    context_length = next((i for i, token in enumerate(ids) if token < 0), len(ids))
    chunks = batch_chunks(args.batch_size, args.max_inference_batch_size)
    if context_length == len(ids):
        return seq.expand(args.batch_size, -1).clone()
    if context_length == 0:
        raise ValueError("filling_sequence needs at least one given token before the first one to generate.")
    positions = torch.tensor(position_ids(ids, context_length, tokenizer["[ROI2]"]), device=device)  # [L]
    _check_positions(model, positions)

    state = InvalidSlices(tokenizer, invalid_slices)
    for token in ids[:context_length]:
        state.update(token)
    num_generated = sum(token < 0 for token in ids)
    total = num_generated * args.batch_size
    with (
        torch.inference_mode(),
        tqdm(total=total, disable=not progress, unit="token") as bar,
    ):
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            bar.update(count)
            if on_step is not None:
                on_step(done, total)

        cache = model.new_kv_cache(len(ids))
        first_logits = model.forward_cached(
            seq[None, :context_length],
            positions[None, :context_length],
            cache,
            last_only=True,
            vocab_range=state.allowed,
        )[:, -1].float()  # [1, allowed]; fp32 sampling whatever the model's dtype
        samples = []
        for number, size in enumerate(chunks):
            # every chunk extends its own copy of the context's cache; the last one takes the original
            chunk_cache = cache if number == len(chunks) - 1 else copy.deepcopy(cache)
            samples.append(
                _fill_chunk(
                    model,
                    seq,
                    ids,
                    positions,
                    context_length,
                    chunk_cache.expand_batch(size),
                    first_logits.expand(size, -1).clone(),
                    copy.copy(state),
                    args,
                    generator,
                    advance,
                )
            )
    return torch.cat(samples)


def _fill_chunk(
    model: GPT2Model,
    seq: torch.Tensor,
    ids: list[int],
    positions: torch.Tensor,
    context_length: int,
    cache: mpu.KVCache,
    logits: torch.Tensor,
    state: InvalidSlices,
    args: SamplingConfig,
    generator: torch.Generator | None,
    advance: Callable[[int], None],
) -> torch.Tensor:
    """Generate one chunk of samples; ``cache`` holds the context, ``logits`` ``[b, allowed]`` follow it.

    ``advance(n)`` is called after each step with the number of tokens it generated.
    """
    size = logits.size(0)
    tokens = seq.repeat(size, 1)  # [b, L]; negative entries are overwritten as they are sampled
    fed = context_length  # tokens[:, :fed] are in the cache
    first_id = state.allowed[0]  # the id of logits[:, 0]
    for index in range(context_length, len(ids)):
        if ids[index] >= 0:
            state.update(ids[index])
            continue
        if fed < index:
            first_id = state.allowed[0]
            logits = model.forward_cached(
                tokens[:, fed:index],
                positions[fed:index].expand(size, -1),
                cache,
                last_only=True,
                vocab_range=state.allowed,
            )[:, -1].float()  # [b, allowed]
            fed = index
        state.mask_(logits, first_id)
        sampled, _ = sample(logits, args.temperature, args.top_k, args.top_p, generator)
        tokens[:, index] = sampled + first_id
        advance(size)
    return tokens


def _options(kwargs: dict) -> tuple[Tokenizer, torch.Generator | None, bool, StepCallback | None]:
    """The keyword options of :func:`filling_sequence`; unknown ones are an error (catches typos)."""
    unknown = set(kwargs) - {"tokenizer", "generator", "progress", "on_step"}
    if unknown:
        raise TypeError(f"filling_sequence got unexpected keyword arguments: {', '.join(sorted(unknown))}.")
    return (
        tokenizer_or_default(kwargs.get("tokenizer")),
        kwargs.get("generator"),
        bool(kwargs.get("progress", False)),
        kwargs.get("on_step"),
    )


def _check_positions(model: GPT2Model, positions: torch.Tensor) -> None:
    available = model.transformer.position_embeddings.num_embeddings
    needed = int(positions.max()) + 1
    if needed > available:
        raise ValueError(
            f"The sequence needs {needed} positions but the model has {available} position embeddings "
            "(--max-position-embeddings)."
        )
