"""raw: complete any query in the query language, e.g. text and the top half of an image.

The original accepted ``--generation-task raw`` but never implemented it. Query line: one query, such as
``[ROI1] 一只猫 [BASE] [BOI1] [Image512]cat.jpg`` (keep the image's first 512 codes, generate the rest) or
``[ROI1] 一只猫 [BASE] [BOI1] [MASK]*1024``; every ``[MASK]`` and every code past N of ``[ImageN]`` is
generated. Images are read at the image size. Each sample's last image is saved like text2image's, and
its decoded text (command names and text, TAB between samples) goes to ``raw.txt``.

From Python: ``complete(ctx, query)`` returns each sample's ``(segments, images)``.
"""

from data_utils.unified_tokenizer import MASK, QueryError
from generation.tasks.base import Decoded, QueryResult, Task, TaskContext, images_result


def complete(ctx: TaskContext, query: str) -> list[Decoded]:
    """Complete ``query`` ``--batch-size`` times → per sample: (text and command segments, images)."""
    ids = ctx.parse(query)
    if MASK not in ids:
        raise QueryError("the query has nothing to generate: add [MASK], [MASK]*N or an [ImageN]path")
    return [ctx.tokenizer.DecodeIds(sample) for sample in ctx.fill(ids)]


def raw(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Run the query ``fields[0]``: save each sample's last image, record each sample's text."""
    decoded = complete(ctx, fields[0])
    result = images_result(decoded, report=True)
    result.line = "\t".join(result.report)
    return result


TASK = Task("raw", ("query",), raw, results_file="raw.txt")
