"""super-resolution: a 256² image and its caption → one 512² image, drawn in 9 overlapping windows.

Query line: ``text<TAB>image path``. The image's 32×32 codes condition ``generation.magnify``, which fills a
64×64 grid window by window (slow: nine generations of up to 1024 tokens), each window a super-resolution
row of ``data_utils.layouts``. One image per query whatever ``--batch-size``, as in the original; with
``--debug`` the grid shows the low-resolution input (its VQ-VAE reconstruction, upsampled) beside the result.
"""

from data_utils import layouts
from generation.magnify import magnify
from generation.tasks.base import QueryResult, Task, TaskContext


def super_resolution(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Draw the image ``fields[1]`` at twice its size, guided by the caption ``fields[0]``."""
    text, path = fields
    prompt = layouts.super_resolution_prefix(ctx.tokenizer, ctx.text_ids(text), ctx.grid_side)
    low = ctx.image_codes(path)
    # The longest window: prompt, a quarter of the low-res codes, the midfix and a full block of codes.
    ctx.check_length(len(prompt) + ctx.num_codes // 4 + len(layouts.SR_MIDFIX) + ctx.num_codes)
    high = magnify(
        ctx.model, ctx.tokenizer, low, prompt, ctx.sampling, generator=ctx.generator, progress=ctx.progress
    )
    decode = ctx.tokenizer.img_tokenizer.DecodeIds
    image = decode(high)  # [1, 3, 2H, 2W]
    return QueryResult(samples=[image], debug_images=[decode(low), image])


TASK = Task(layouts.SUPER_RESOLUTION, ("text", "image path"), super_resolution)
