"""image2text: an image → ``--batch-size`` captions from the caption model (§8.4).

Query line: ``image path``. Sequence: ``[BASE] [BOI1] [Image]{path} [EOI1] [ROI1] [MASK]*20``. As in the
original, exactly 20 text tokens are generated (there is no stop token) and command ids are forbidden
after ``[EOI1]``. The captions are printed and written, TAB-separated, to ``captions.txt`` (line n for
input line n); the original only printed them.
"""

from data_utils.unified_tokenizer import MASK
from generation.tasks.base import QueryResult, Task, TaskContext

CAPTION_LENGTH = 20


def image2text(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Caption the image at ``fields[0]`` ``--batch-size`` times."""
    (path,) = fields
    ids = ctx.parse(f"{ctx.size_token} [BOI1] [Image]{path} [EOI1] [ROI1] [MASK]*{CAPTION_LENGTH}")
    start = ids.index(MASK)
    captions = []
    for sample in ctx.fill(ids):
        segments, _ = ctx.tokenizer.DecodeIds(sample[start:])  # text only: no image to decode
        captions.append(" ".join("".join(segments).split()))  # one line, no TABs
    return QueryResult(line="\t".join(captions), report=[f"{path}: {caption}" for caption in captions])


TASK = Task("image2text", ("image path",), image2text, results_file="captions.txt")
