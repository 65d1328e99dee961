"""text2image: a caption → ``--batch-size`` images.

Query line: ``text``. Sequence: the text2image layout without its closing ``[EOI1]``,
``[ROI1] {text} [BASE] [BOI1] [MASK]*1024`` (size token and code count from the VQ-VAE).

Two quality levers (both off by default, as for the released weights):

* ``--guidance-scale S``: classifier-free guidance against the same query without its caption,
  ``[ROI1] [BASE] [BOI1] [MASK]*1024`` (``layouts.drop_caption``, the form caption dropout trains on);
* ``--post-select K``: K candidates are drawn per image, and the one whose codes best predict the caption
  under the caption model (the post-selection score of the image2text row ``[BASE] [BOI1] codes [EOI1]
  [ROI1] {text}``) is kept; the report line names the kept candidates and their scores.

A caption with words the text tokenizer does not know still runs, with one notice line naming them.
"""

import torch

from data_utils import layouts
from data_utils.layouts import MASK
from generation.tasks.base import QueryResult, Task, TaskContext


def text2image(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Sample ``--batch-size`` images for the caption ``fields[0]``."""
    (text,) = fields
    text_ids = ctx.text_ids(text)
    ids = layouts.text2image(ctx.tokenizer, text_ids, [MASK] * ctx.num_codes, end_image=False)
    unconditional = layouts.drop_caption(ctx.tokenizer, ids) if ctx.guidance_scale != 1 else None
    if ctx.post_select == 1:
        samples = ctx.fill(ids, unconditional=unconditional)
        selection = []
    else:
        candidates = ctx.fill(ids, ctx.args.batch_size * ctx.post_select, unconditional)
        samples, selection = post_select(ctx, text_ids, candidates)
    result = ctx.decode_images(samples)
    result.report = ctx.unknown_words_notice(text) + selection + result.report
    return result


def post_select(
    ctx: TaskContext, text_ids: list[int], candidates: torch.Tensor
) -> tuple[torch.Tensor, list[str]]:
    """The best of each group of ``ctx.post_select`` consecutive candidates ``[b·K, L]`` → ``[b, L]``.

    Also returns one report line: the kept candidate of each group (0-based) and its score.
    """
    groups = candidates.size(0) // ctx.post_select
    rows = [layouts.image2text(ctx.tokenizer, row[-ctx.num_codes :], text_ids) for row in candidates]
    ctx.check_length(len(rows[0]))
    scores = ctx.score(rows).view(groups, ctx.post_select)  # [b, K]
    best = scores.argmax(dim=1)  # [b]
    kept = candidates.view(groups, ctx.post_select, -1)[torch.arange(groups), best.cpu()]
    picks = ", ".join(str(int(i)) for i in best)
    kept_scores = ", ".join(f"{float(scores[g, i]):.4f}" for g, i in enumerate(best))
    line = f"post-selection: kept candidate {picks} of {ctx.post_select} per image (scores {kept_scores})"
    return kept, [line]


TASK = Task(layouts.TEXT2IMAGE, ("text",), text2image)
