"""text2image: a caption → ``--batch-size`` images.

Query line: ``text``. Sequence: the text2image layout without its closing ``[EOI1]``,
``[ROI1] {text} [BASE] [BOI1] [MASK]*1024`` (size token and code count from the VQ-VAE).

Two quality levers (both off by default, as for the released weights):

* ``--guidance-scale S``: classifier-free guidance against the same query without its caption,
  ``[ROI1] [BASE] [BOI1] [MASK]*1024`` (``layouts.drop_caption``, the form caption dropout trains on);
* ``--post-select K``: K candidates are drawn per image, and the one whose codes best predict the caption
  under the caption model(s) (the post-selection score of the image2text row ``[BASE] [BOI1] codes [EOI1]
  [ROI1] {text}``, summed over the ``--post-select-load`` models) is kept; the report line names the kept
  candidates and their scores.

A caption with words the text tokenizer does not know still runs, with one notice line naming them.

:func:`guidance_query` and :func:`select_candidates` take a tokenizer and a scoring function, not a
:class:`TaskContext`, so the web demo (``web.backend``) guides and selects exactly as this task does.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from data_utils import UnifiedTokenizer, layouts
from data_utils.layouts import MASK
from generation.tasks.base import QueryResult, Task, TaskContext

Scorer = Callable[[list[list[int]]], torch.Tensor]  # image2text rows → their post-selection scores [n]


def text2image(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Sample ``--batch-size`` images for the caption ``fields[0]``."""
    (text,) = fields
    text_ids = ctx.text_ids(text)
    ids = layouts.text2image(ctx.tokenizer, text_ids, [MASK] * ctx.num_codes, end_image=False)
    unconditional = guidance_query(ctx.tokenizer, ids, ctx.guidance_scale)
    if ctx.post_select == 1:
        samples = ctx.fill(ids, unconditional=unconditional)
        selection = []
    else:
        candidates = ctx.fill(ids, ctx.args.batch_size * ctx.post_select, unconditional)
        samples, selection = post_select(ctx, text_ids, candidates)
    result = ctx.decode_images(samples)
    result.report = ctx.unknown_words_notice(text) + selection + result.report
    return result


def guidance_query(
    tokenizer: UnifiedTokenizer, ids: Sequence[int], guidance_scale: float
) -> list[int] | None:
    """The unconditional query guidance runs beside the text2image query ``ids``; None at scale 1 (off)."""
    return layouts.drop_caption(tokenizer, ids) if guidance_scale != 1 else None


@dataclass(frozen=True)
class Selection:
    """What post-selection kept: the rows ``[b, L]``; per group the kept candidate (0-based) and its score."""

    kept: torch.Tensor
    picks: list[int]
    scores: list[float]


def select_candidates(
    candidates: torch.Tensor,
    text_ids: Sequence[int],
    post_select: int,
    tokenizer: UnifiedTokenizer,
    num_codes: int,
    score: Scorer,
) -> Selection:
    """The best of each group of ``post_select`` consecutive candidates ``[b·K, L]`` for the caption.

    Each candidate's last ``num_codes`` ids are its image; ``score`` gets the image2text rows ``[size]
    [BOI1] codes [EOI1] [ROI1] text`` of all of them, in order, and returns their scores (higher is better).
    """
    groups = candidates.size(0) // post_select
    rows = [layouts.image2text(tokenizer, row[-num_codes:], text_ids) for row in candidates]
    scores = score(rows).view(groups, post_select)  # [b, K]
    best = scores.argmax(dim=1)  # [b]
    kept = candidates.view(groups, post_select, -1)[torch.arange(groups), best.cpu()]
    picks = [int(i) for i in best]
    return Selection(kept, picks, [float(scores[g, i]) for g, i in enumerate(picks)])


def post_select(
    ctx: TaskContext, text_ids: list[int], candidates: torch.Tensor
) -> tuple[torch.Tensor, list[str]]:
    """:func:`select_candidates` with the context's caption models; also returns one report line.

    The line names the kept candidate of each group (0-based) and its score.
    """

    def score(rows: list[list[int]]) -> torch.Tensor:
        ctx.check_length(len(rows[0]))
        return ctx.score(rows)

    selection = select_candidates(candidates, text_ids, ctx.post_select, ctx.tokenizer, ctx.num_codes, score)
    picks = ", ".join(map(str, selection.picks))
    kept_scores = ", ".join(f"{value:.4f}" for value in selection.scores)
    line = f"post-selection: kept candidate {picks} of {ctx.post_select} per image (scores {kept_scores})"
    return selection.kept, [line]


TASK = Task(layouts.TEXT2IMAGE, ("text",), text2image)
