"""image2text: an image → ``--batch-size`` captions from the caption model.

Query line: ``image path``. Sequence: the image2text layout with 20 text positions to generate,
``[BASE] [BOI1] [Image]{path} [EOI1] [ROI1] [MASK]*20``. As in the original, 20 text tokens are generated
and command ids are forbidden after ``[EOI1]``; the caption is cut at the first text end piece (``</s>``),
which a caption model trained with `preprocess_entry.py --caption-end` emits where its caption ends (the
released caption model was trained without it). The captions are printed and written,
TAB-separated, to ``captions.txt`` (line n for input line n); the original only printed them.
"""

from data_utils import layouts
from data_utils.layouts import MASK
from generation.tasks.base import QueryResult, Task, TaskContext

CAPTION_LENGTH = 20


def image2text(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Caption the image at ``fields[0]`` ``--batch-size`` times."""
    (path,) = fields
    captions = generate_captions(ctx, path)
    return QueryResult(line="\t".join(captions), report=[f"{path}: {caption}" for caption in captions])


def generate_captions(ctx: TaskContext, path: str) -> list[str]:
    """``--batch-size`` captions of the image at ``path``, each one line (also used by the demo's caption
    measurement, so that it measures what this task writes)."""
    ids = layouts.image2text(ctx.tokenizer, ctx.image_codes(path), [MASK] * CAPTION_LENGTH)
    start = len(ids) - CAPTION_LENGTH
    end = ctx.tokenizer.caption_end_id
    captions = []
    for sample in ctx.fill(ids):
        text = [int(i) for i in sample[start:]]
        if end in text:
            text = text[: text.index(end)]
        segments, _ = ctx.tokenizer.DecodeIds(text)  # text only: no image to decode
        captions.append(" ".join("".join(segments).split()))  # one line, no TABs
    return captions


TASK = Task(layouts.IMAGE2TEXT, ("image path",), image2text, results_file="captions.txt")
