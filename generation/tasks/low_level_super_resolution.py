"""low-level super-resolution: a 128² image and its caption → ``--batch-size`` 256² images.

Query line: ``text<TAB>image path``. The image is read at half the image size (128² → 16×16 codes) and the
model generates the full 32×32 grid in one super-resolution row of ``data_utils.layouts`` whose crop is the
whole half-size image and whose block is the whole grid: ``[ROI1] {text} [BASE] [BOI1] [Image]{path} [EOI1]
[ROI2] [POS0] [BASE] [BOI2] [MASK]*1024`` (both size tokens are the full-size one, as in the original).
With ``--debug`` the grid shows each sample's low-resolution input, upsampled (nearest), beside its result.
"""

from data_utils import layouts
from data_utils.layouts import MASK
from generation.tasks.base import QueryResult, Task, TaskContext


def low_level_super_resolution(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Generate ``--batch-size`` full-size versions of the half-size image ``fields[1]``."""
    text, path = fields
    low = ctx.image_codes(path, img_size=ctx.image_size // 2)
    ids = layouts.super_resolution_row(
        ctx.tokenizer, ctx.text_ids(text), ctx.grid_side, low, [MASK] * ctx.num_codes
    )
    return ctx.decode_images(ctx.fill(ids))


TASK = Task("low-level super-resolution", ("text", "image path"), low_level_super_resolution)
