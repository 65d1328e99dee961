"""Post-selection: rank candidate images by how well the caption model predicts the shared text from each."""

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F

import mpu
from data_utils.unified_tokenizer import QueryError, tokenizer_or_default
from generation.filling import position_ids
from generation.sampling import Tokenizer
from model import GPT2Model
from model.partition import mask_model_parallel_padding


def text_start(row: Sequence[int], tokenizer: Tokenizer) -> int:
    """Index of the ``[ROI1]`` that follows the first ``[EOI1]`` of ``row``: the text starts right after it.

    Replaces the original's hard-coded 1027 (= ``[BASE] [BOI1]`` + 1024 codes + ``[EOI1]``), so any
    image size works.
    """
    eoi1, roi1 = tokenizer["[EOI1]"], tokenizer["[ROI1]"]
    try:
        image_end = row.index(eoi1)
        return row.index(roi1, image_end + 1)
    except ValueError:
        raise QueryError(
            "A post-selection sequence has no [ROI1] after its [EOI1]; expected the layout "
            "[BASE] [BOI1] image [EOI1] [ROI1] text."
        ) from None


def inverse_prompt_score(
    model: GPT2Model,
    seqs: torch.Tensor | Sequence[Sequence[int]],
    tokenizer: Tokenizer | argparse.Namespace | None = None,
    make_vocab_size_divisible_by: int = 128,
) -> torch.Tensor:
    """Scores ``[b]``: per row of ``seqs``, the sum over its text of log p(token | image, previous text).

    ``seqs`` ``[b, L]`` holds ``[BASE] [BOI1] image [EOI1] [ROI1] text`` rows (one candidate image each, the
    same text). One full forward; as in the original, image ids are excluded from the prediction
    (their logits set to −inf) and the log-softmax runs over the vocabulary padded as at model-parallel
    size 1 (``make_vocab_size_divisible_by``, the model's padding multiple), so the scores do not depend
    on the model-parallel size. The sum is not length-normalised, which does not change the ranking of
    rows sharing a text. ``tokenizer`` may also be the original's third argument, ``args`` (its
    ``make_vocab_size_divisible_by`` is then used), or None: then the process-wide tokenizer is used.
    """
    if isinstance(tokenizer, argparse.Namespace):  # the original's call form: (model, seqs, args)
        make_vocab_size_divisible_by = getattr(
            tokenizer, "make_vocab_size_divisible_by", make_vocab_size_divisible_by
        )
        tokenizer = None
    tokenizer = tokenizer_or_default(tokenizer)
    device = model.word_embeddings.weight.device
    rows = [list(map(int, row)) for row in seqs]
    if not rows:
        raise ValueError("inverse_prompt_score needs at least one sequence.")
    for number, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise QueryError(
                f"Post-selection sequence {number} has {len(row)} tokens but sequence 0 has {len(rows[0])}; "
                "all candidates must share the same text and image size."
            )
        if min(row) < 0:
            raise QueryError(f"Post-selection sequence {number} contains a negative (to-generate) id.")
    starts = torch.tensor([text_start(row, tokenizer) for row in rows], device=device)  # [b]
    length = len(rows[0])
    tokens = torch.tensor(rows, device=device)  # [b, L]
    positions = torch.tensor(position_ids(rows[0], length, tokenizer["[ROI2]"]), device=device)

    with torch.inference_mode():
        logits = model(tokens, positions.expand_as(tokens), 0)[0]  # [b, L, V or V/p]
        if model.parallel_output and mpu.get_model_parallel_world_size() > 1:
            logits = mpu.gather_from_model_parallel_region(logits)
        logits = logits[:, :-1].float()  # [b, L-1, V]: the prediction of tokens 1..L-1
        logits = mask_model_parallel_padding(logits, len(tokenizer), make_vocab_size_divisible_by)
        logits[..., : tokenizer.num_image_tokens] = -float("inf")
        log_probs = F.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)  # [b, L-1]
        predicted = torch.arange(1, length, device=device)  # the position of each target token
        is_text = predicted[None, :] > starts[:, None]  # [b, L-1]
        return torch.where(is_text, log_probs, 0.0).sum(dim=1)


def score_in_batches(
    model: GPT2Model,
    rows: Sequence[Sequence[int]],
    tokenizer: Tokenizer,
    batch_size: int,
    make_vocab_size_divisible_by: int = 128,
) -> torch.Tensor:
    """:func:`inverse_prompt_score` of ``rows``, at most ``batch_size`` per forward → ``[len(rows)]``.

    Used by the post-selection task and by text2image's ``--post-select`` (``--max-inference-batch-size``).
    """
    return torch.cat(
        [
            inverse_prompt_score(model, rows[i : i + batch_size], tokenizer, make_vocab_size_divisible_by)
            for i in range(0, len(rows), batch_size)
        ]
    )
