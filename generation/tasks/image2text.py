"""image2text: an image → ``--batch-size`` captions from the caption model.

Query line: ``image path``. Sequence: the image2text layout with 20 text positions to generate,
``[BASE] [BOI1] [Image]{path} [EOI1] [ROI1] [MASK]*20``. As in the original, exactly 20 text tokens are
generated (there is no stop token) and command ids are forbidden after ``[EOI1]``. The captions are printed
and written, TAB-separated, to ``captions.txt`` (line n for input line n); the original only printed them.
"""

from data_utils import layouts
from data_utils.layouts import MASK
from generation.tasks.base import QueryResult, Task, TaskContext

CAPTION_LENGTH = 20


def image2text(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Caption the image at ``fields[0]`` ``--batch-size`` times."""
    (path,) = fields
    ids = layouts.image2text(ctx.tokenizer, ctx.image_codes(path), [MASK] * CAPTION_LENGTH)
    start = len(ids) - CAPTION_LENGTH
    captions = []
    for sample in ctx.fill(ids):
        segments, _ = ctx.tokenizer.DecodeIds(sample[start:])  # text only: no image to decode
        captions.append(" ".join("".join(segments).split()))  # one line, no TABs
    return QueryResult(line="\t".join(captions), report=[f"{path}: {caption}" for caption in captions])


TASK = Task(layouts.IMAGE2TEXT, ("image path",), image2text, results_file="captions.txt")
