"""Caption dropout: a fraction of text2image training rows in their unconditional form.

Classifier-free guidance (``--guidance-scale``) needs the model to know p(image) as well as
p(image | caption). Training gets it by showing a fraction P (``--caption-dropout P``) of the text2image
rows without their caption, in exactly the form guidance queries at inference:
``layouts.drop_caption``, ``[ROI1] [size] [BOI1] codes [EOI1]``, right-padded with ``[PAD]`` (loss mask
0) to the row's length. Other rows (image2text, super-resolution) are never changed.

Which rows are dropped depends only on ``(seed, index)``, not on any RNG state, so it is the same in
every data-loader worker and after resuming a run mid-epoch.
"""

import numpy as np
from torch.utils.data import Dataset

from data_utils import layouts
from data_utils.datasets import Sample
from data_utils.layouts import CommandIds

COMMANDS = ("[ROI1]", "[BOI1]", "[ROI2]", "[PAD]")  # what the transform needs from the tokenizer


def drop_caption_sample(sample: Sample, tokenizer: CommandIds) -> Sample:
    """The unconditional form of a padded training sample ``{'text', 'loss_mask'}`` (other keys kept).

    The caption (:func:`layouts.caption_span`) is cut out of both arrays and as many ``[PAD]`` positions
    with loss mask 0 are appended, so the length stays. A sample that is not text2image, or has no
    caption, is returned as it is.
    """
    text, loss_mask = sample["text"], sample["loss_mask"]
    span = layouts.caption_span(tokenizer, text)
    if span is None or span[0] == span[1]:
        return sample
    start, stop = span
    removed = stop - start
    return {
        **sample,
        "text": np.concatenate([text[:start], text[stop:], np.full(removed, tokenizer["[PAD]"], text.dtype)]),
        "loss_mask": np.concatenate(
            [loss_mask[:start], loss_mask[stop:], np.zeros(removed, loss_mask.dtype)]
        ),
    }


class CaptionDropout(Dataset):
    """``dataset`` with each item's text2image row dropped to its unconditional form with ``probability``.

    Item ``i`` is dropped when a generator seeded with ``(seed, i)`` draws below ``probability``. Wrap the
    outermost training dataset (the one the loader indexes), so that repeated draws of one stored row
    are decided independently.
    """

    def __init__(self, dataset: Dataset, probability: float, seed: int, tokenizer: CommandIds):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"caption dropout probability {probability} is outside [0, 1].")
        self.dataset = dataset
        self.probability = probability
        self.seed = seed
        self.commands = {name: tokenizer[name] for name in COMMANDS}  # small and picklable for workers

    def __len__(self) -> int:
        return len(self.dataset)

    def dropped(self, index: int) -> bool:
        """Whether item ``index`` loses its caption."""
        return bool(np.random.default_rng([self.seed, index]).random() < self.probability)

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[index]
        return drop_caption_sample(sample, self.commands) if self.dropped(index) else sample
