"""post-selection: score candidate images by how well the caption model predicts their shared text .

Query line: ``text<TAB>image 1<TAB>image 2...``. Each image gives an image2text row, ``[BASE] [BOI1]
[Image]{path} [EOI1] [ROI1] {text}``; its score is the sum over the text of log p(token | image, earlier text)
(``generation.inverse_prompt_score``), higher is better. The scores, TAB-separated in the order of the
images, go to ``scores.txt``, line n for input line n. A line with an unreadable image gets an ``error:``
line there; the original skipped the image silently, shifting the scores of the others.
"""

from collections.abc import Sequence

import torch

from data_utils import layouts
from data_utils.layouts import MASK
from data_utils.unified_tokenizer import QueryError
from generation.tasks.base import QueryResult, Task, TaskContext


def post_selection(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Score the images ``fields[1:]`` against the caption ``fields[0]``."""
    text, *paths = fields
    scores = score_candidates(ctx, text, paths).tolist()
    return QueryResult(
        line="\t".join(f"{score:.4f}" for score in scores),
        report=[f"{path}: {score:.4f}" for path, score in zip(paths, scores, strict=True)],
    )


def score_candidates(ctx: TaskContext, text: str, paths: Sequence[str]) -> torch.Tensor:
    """Scores ``[len(paths)]`` of the images at ``paths`` against ``text`` (also used by the demo's
    post-selection measurement, so that it measures what this task writes)."""
    text_ids = ctx.text_ids(text)
    if MASK in text_ids:
        raise QueryError("a post-selection text cannot contain [MASK]: there is nothing to generate")
    rows = [layouts.image2text(ctx.tokenizer, ctx.image_codes(path), text_ids) for path in paths]
    ctx.check_length(len(rows[0]))
    return ctx.score(rows)


TASK = Task(
    "post-selection", ("text", "image path"), post_selection, repeat_last=True, results_file="scores.txt"
)
