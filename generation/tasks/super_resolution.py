"""super-resolution: a 256² image and its caption → one 512² image, drawn in 9 overlapping windows (§8.4).

Query line: ``text<TAB>image path``. The image's 32×32 codes condition ``generation.magnify``, which fills a
64×64 grid window by window (slow: nine generations of up to 1024 tokens). One image per query whatever
``--batch-size``, as in the original; with ``--debug`` the grid shows the low-resolution input (its VQ-VAE
reconstruction, upsampled) beside the result.
"""

from generation.magnify import magnify
from generation.tasks.base import QueryResult, Task, TaskContext

WINDOW_MIDFIX_LENGTH = 5  # [EOI1] [ROI2] [POS0] [size] [BOI2] between a window's low-res crop and its block


def super_resolution(ctx: TaskContext, fields: list[str]) -> QueryResult:
    """Draw the image ``fields[1]`` at twice its size, guided by the caption ``fields[0]``."""
    text, path = fields
    ids = ctx.parse(f"[ROI1] {text} {ctx.size_token} [BOI1] [Image]{path}")
    prompt, low = ids[: -ctx.num_codes], ids[-ctx.num_codes :]
    # The longest window: prompt, a quarter of the low-res codes, the midfix and a full block of codes.
    ctx.check_length(len(prompt) + ctx.num_codes // 4 + WINDOW_MIDFIX_LENGTH + ctx.num_codes)
    high = magnify(
        ctx.model, ctx.tokenizer, low, prompt, ctx.args, generator=ctx.generator, progress=ctx.progress
    )
    decode = ctx.tokenizer.img_tokenizer.DecodeIds
    image = decode(high)  # [1, 3, 2H, 2W]
    return QueryResult(samples=[image], debug_images=[decode(low), image])


TASK = Task("super-resolution", ("text", "image path"), super_resolution)
