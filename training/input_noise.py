"""Super-resolution input noise: training shows the model some wrong hi-res codes, never wrong labels.

A super-resolution row ends in ``[BOI2] block``: the hi-res codes of a window, predicted one by one
from the low-res crop earlier in the row and the codes already drawn. Trained on clean rows, a small
model learns the cheap half of that, "continue the left and upper neighbours", and not the other half,
"where the crop's shape starts": every interior code is predicted by its neighbours, only the few
codes where a region begins need the crop. At inference it then never begins a region (greedy
decoding drew only background). With ``--sr-input-noise P`` each block code of a training row is, as
model *input* only, replaced with probability P by the code at a random position of the same block
(a plausible but misplaced code, like the model's own mistakes); the labels stay the true codes. A
neighbour is then unreliable, and the crop is the only dependable evidence.

The draws come from torch's default generator, whose state checkpoints save and restore (as for
dropout), so a resumed run draws what the uninterrupted one drew; under model parallelism the first
rank's draws are broadcast to the others (``training.step``). Evaluation rows are never changed.
"""

import torch


def corrupt_block_inputs(
    tokens: torch.Tensor,
    boi2_id: int,
    num_image_tokens: int,
    probability: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``tokens`` ``[b, s]``, each image code after a row's first ``[BOI2]`` replaced w.p. ``probability``.

    The replacement is the code at a uniformly drawn position of the same block (the image codes from
    the first ``[BOI2]`` on, which end the row or precede its padding). Rows without ``[BOI2]`` (other
    layouts) are returned unchanged. Returns a new tensor; ``tokens`` is not modified.
    """
    batch_size, seq_length = tokens.shape
    is_boi2 = tokens == boi2_id
    has_block = is_boi2.any(dim=1, keepdim=True)
    start = is_boi2.int().argmax(dim=1, keepdim=True) + 1  # [b, 1]: the block's first position
    arange = torch.arange(seq_length, device=tokens.device).expand(batch_size, seq_length)
    in_block = has_block & (arange >= start) & (tokens < num_image_tokens)
    length = in_block.sum(dim=1, keepdim=True).clamp_min(1)
    draws = torch.rand((2, batch_size, seq_length), generator=generator, device=tokens.device)
    source = (start + (draws[0] * length).long().clamp_max(length - 1)).clamp_max(seq_length - 1)
    replace = in_block & (draws[1] < probability)
    return torch.where(replace, tokens.gather(1, source), tokens)
