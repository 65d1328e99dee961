"""text2image: a caption → ``--batch-size`` images (§8.4).

Query line: ``text``. Sequence: ``[ROI1] {text} [BASE] [BOI1] [MASK]*1024`` (size token and code count
from the VQ-VAE).
"""

from generation.tasks.base import QueryResult, Task, TaskContext


def text2image(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Sample ``--batch-size`` images for the caption ``fields[0]``."""
    (text,) = fields
    ids = ctx.parse(f"[ROI1] {text} {ctx.size_token} [BOI1] [MASK]*{ctx.num_codes}")
    return ctx.decode_images(ctx.fill(ids))


TASK = Task("text2image", ("text",), text2image)
