"""How CogView's state dict is split across model-parallel ranks, and split/merge/pad on plain state dicts.

The layout is Megatron's 1-D tensor parallelism, with p ranks:

* ``word_embeddings.weight`` ``[V, h]``: vocabulary rows, contiguous (rank r owns ``[r V/p, (r+1) V/p)``).
* ``query_key_value.weight|bias`` ``[3h, (h)]``: rows, **stride 3**: rank r holds ``[Q_r; K_r; V_r]``.
* ``dense_h_to_4h.weight|bias`` ``[4h, (h)]``: rows (column-parallel), contiguous.
* ``attention.dense.weight`` ``[h, h]`` and ``dense_4h_to_h.weight`` ``[h, 4h]``: columns (row-parallel);
  their biases are replicated.
* Everything else (LayerNorms, position embeddings) is replicated.

The functions here take and return plain ``{key: tensor}`` dicts and never touch files or processes,
so the checkpoint loader, the reshard tool and the tests share one implementation.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

EMBEDDING_KEY = "word_embeddings.weight"
SAT_EMBEDDING_KEY = "transformer.word_embeddings.weight"  # SwissArmyTransformer's spelling of the same tensor
COGVIEW_NUM_TOKENS = 58219  # 8192 image + 50000 text + 27 command tokens; rows beyond are padding

StateDict = dict[str, torch.Tensor]


class PartitionError(ValueError):
    """A state dict that cannot be split, merged or resized as asked (the message names the key)."""


@dataclass(frozen=True)
class Partition:
    """A tensor split along ``dim`` into ``p * stride`` equal chunks; rank r takes chunks r, r + p, ...

    With ``stride`` 1 that is a contiguous slice; with stride 3 on the fused QKV weight it is
    ``[Q_r; K_r; V_r]``, so each rank owns whole attention heads.
    """

    dim: int
    stride: int = 1


_PARTITIONS: tuple[tuple[re.Pattern[str], Partition], ...] = (
    (re.compile(r"word_embeddings\.weight"), Partition(0)),
    (re.compile(r"transformer\.layers\.\d+\.attention\.query_key_value\.(weight|bias)"), Partition(0, 3)),
    (re.compile(r"transformer\.layers\.\d+\.mlp\.dense_h_to_4h\.(weight|bias)"), Partition(0)),
    (re.compile(r"transformer\.layers\.\d+\.(attention\.dense|mlp\.dense_4h_to_h)\.weight"), Partition(1)),
)


def partition_of(key: str) -> Partition | None:
    """How the tensor named ``key`` (either embedding spelling) is split; ``None`` when it is replicated."""
    key = EMBEDDING_KEY if key == SAT_EMBEDDING_KEY else key
    return next((part for pattern, part in _PARTITIONS if pattern.fullmatch(key)), None)


def padded_vocab_size(num_tokens: int, model_parallel_size: int, multiple: int = 128) -> int:
    """The embedding rows the original allocates: ``num_tokens`` rounded up to ``multiple * p``.

    This is why the padding depends on the model-parallel size: 58219 → 58240 at p = 1 but 58368 at
    p = 2, 4 or 8.
    """
    step = multiple * model_parallel_size
    return -(-num_tokens // step) * step


def mask_model_parallel_padding(
    logits: torch.Tensor, num_tokens: int, multiple: int = 128, first_id: int = 0
) -> torch.Tensor:
    """``logits`` ``[..., n]`` with the ids that exist only because of model-parallel padding set to −inf.

    ``logits[..., k]`` is the logit of id ``first_id + k``: ``first_id`` is 0 for gathered logits, the
    shard's first id for a vocab-parallel shard (``rank * n``), or the start of a ``vocab_range``. Ids
    from ``padded_vocab_size(num_tokens, 1, multiple)`` on are masked; the MP=1 padding rows stay, as
    in the original. Every softmax over the vocabulary (scores, the training loss) goes through this so
    its result does not depend on how the model is split: 58219 tokens make 58240 rows at p = 1 but
    58368 at p = 2, and the 128 extra rows would otherwise join the normalisation.

    Out of place (autograd-safe); returns ``logits`` itself when no column is padding.
    """
    kept = padded_vocab_size(num_tokens, 1, multiple)
    if first_id + logits.size(-1) <= kept:
        return logits
    ids = torch.arange(first_id, first_id + logits.size(-1), device=logits.device)
    return logits.masked_fill(ids >= kept, -float("inf"))


def normalize_keys(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """A copy of ``state_dict`` with SAT's embedding key renamed to the original's spelling."""
    if SAT_EMBEDDING_KEY not in state_dict:
        return dict(state_dict)
    if EMBEDDING_KEY in state_dict:
        raise PartitionError(
            f"state dict holds both {EMBEDDING_KEY!r} and {SAT_EMBEDDING_KEY!r}; keep only one"
        )
    return {EMBEDDING_KEY if key == SAT_EMBEDDING_KEY else key: value for key, value in state_dict.items()}


def check_divisible(state_dict: Mapping[str, torch.Tensor], model_parallel_size: int) -> None:
    """Raise unless every partitioned tensor's split dimension divides into ``p * stride`` equal chunks."""
    for key, tensor in state_dict.items():
        part = partition_of(key)
        if part is not None and tensor.size(part.dim) % (model_parallel_size * part.stride) != 0:
            raise PartitionError(
                f"{key} has shape {list(tensor.shape)}: dimension {part.dim} does not split into "
                f"{model_parallel_size} model-parallel shards of {part.stride} block(s) each"
            )


def shard_state_dict(
    state_dict: Mapping[str, torch.Tensor], model_parallel_size: int, rank: int
) -> StateDict:
    """Rank ``rank``'s shard at model-parallel size ``p``: what a model built at size p holds on that rank.

    Partitioned tensors are fresh copies (saving a view would save the whole tensor); replicated ones are
    shared with the input.
    """
    if not 0 <= rank < model_parallel_size:
        raise PartitionError(f"rank {rank} is outside model-parallel size {model_parallel_size}")
    state_dict = normalize_keys(state_dict)
    check_divisible(state_dict, model_parallel_size)
    shard = {}
    for key, tensor in state_dict.items():
        part = partition_of(key)
        if part is None:
            shard[key] = tensor
            continue
        chunks = torch.split(
            tensor, tensor.size(part.dim) // (model_parallel_size * part.stride), dim=part.dim
        )
        shard[key] = torch.cat(chunks[rank::model_parallel_size], dim=part.dim)
    return shard


def split_state_dict(state_dict: Mapping[str, torch.Tensor], model_parallel_size: int) -> list[StateDict]:
    """All ``p`` shards of a full (model-parallel size 1) state dict; inverse of :func:`merge_state_dicts`."""
    return [shard_state_dict(state_dict, model_parallel_size, rank) for rank in range(model_parallel_size)]


def merge_state_dicts(
    shards: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] | None = None
) -> StateDict:
    """Join the shards of ranks 0..p-1 into the full state dict (stride-aware); exact inverse of the split.

    Every shard must hold the same keys with the same shapes, and replicated tensors must be equal on
    all ranks. ``names`` (e.g. file paths) label the shards in error messages.
    """
    if not shards:
        raise PartitionError("no shards to merge")
    if len(shards) == 1:  # nothing to join; no copy of a (possibly 8 GB, memory-mapped) checkpoint
        return normalize_keys(shards[0])
    names = list(names) if names is not None else [f"shard {rank}" for rank in range(len(shards))]
    shards = [normalize_keys(shard) for shard in shards]
    first = shards[0]
    for name, shard in zip(names[1:], shards[1:], strict=True):
        if shard.keys() != first.keys():
            key = next(iter(shard.keys() ^ first.keys()))
            where = f"{names[0]} but not {name}" if key in first else f"{name} but not {names[0]}"
            raise PartitionError(f"model-parallel shards disagree: key {key!r} is in {where}")
    merged = {}
    for key, tensor in first.items():
        for name, shard in zip(names[1:], shards[1:], strict=True):
            if shard[key].shape != tensor.shape:
                raise PartitionError(
                    f"model-parallel shards disagree on {key}: shape {list(tensor.shape)} in {names[0]} "
                    f"but {list(shard[key].shape)} in {name}"
                )
        part = partition_of(key)
        if part is None:
            for name, shard in zip(names[1:], shards[1:], strict=True):
                if not torch.equal(shard[key], tensor):
                    raise PartitionError(
                        f"model-parallel shards disagree on replicated tensor {key}: "
                        f"{name} differs from {names[0]}"
                    )
            merged[key] = tensor
            continue
        if tensor.size(part.dim) % part.stride != 0:
            raise PartitionError(
                f"{key} has shape {list(tensor.shape)}: not divisible by its stride {part.stride}"
            )
        # pieces[r][s]: the s-th stride block (e.g. Q, K or V) of rank r; full order is s-major, then r.
        pieces = [
            torch.split(shard[key], tensor.size(part.dim) // part.stride, dim=part.dim) for shard in shards
        ]
        merged[key] = torch.cat(
            [pieces[r][s] for s in range(part.stride) for r in range(len(shards))], dim=part.dim
        )
    return merged


def resize_vocab(
    state_dict: Mapping[str, torch.Tensor], rows: int, num_tokens: int | None = None
) -> StateDict:
    """The full state dict with the embedding padded by zero rows, or cut, to ``rows`` rows.

    Cutting drops padding rows only: it needs ``num_tokens`` (the real vocabulary size) and refuses to
    go below it. Zero rows are what the original's padding would hold unused, and they never change
    the logits of real tokens.
    """
    state_dict = normalize_keys(state_dict)
    if EMBEDDING_KEY not in state_dict:
        raise PartitionError(f"state dict has no {EMBEDDING_KEY!r} to resize")
    weight = state_dict[EMBEDDING_KEY]  # [V, h]
    current = weight.size(0)
    if rows > current:
        weight = torch.cat([weight, weight.new_zeros(rows - current, *weight.shape[1:])])
    elif rows < current:
        if num_tokens is None or rows < num_tokens:
            raise PartitionError(
                f"{EMBEDDING_KEY} has {current} rows: cutting it to {rows} would drop real token rows "
                f"(real vocabulary size {num_tokens if num_tokens is not None else 'unknown'})"
            )
        weight = weight[:rows].clone()
    return {**state_dict, EMBEDDING_KEY: weight}
