"""text2image: a caption → ``--batch-size`` images.

Query line: ``text``. Sequence: the text2image layout without its closing ``[EOI1]``,
``[ROI1] {text} [BASE] [BOI1] [MASK]*1024`` (size token and code count from the VQ-VAE).
"""

from data_utils import layouts
from data_utils.layouts import MASK
from generation.tasks.base import QueryResult, Task, TaskContext


def text2image(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Sample ``--batch-size`` images for the caption ``fields[0]``."""
    (text,) = fields
    ids = layouts.text2image(ctx.tokenizer, ctx.text_ids(text), [MASK] * ctx.num_codes, end_image=False)
    return ctx.decode_images(ctx.fill(ids))


TASK = Task(layouts.TEXT2IMAGE, ("text",), text2image)
