"""Checking generated captions (image2text) against the scene of the image they describe.

A caption is right on a check (background, foreground, animal) when it parses back
(`demo.captions.parse_caption`) to a scene that agrees with the image's there; a caption that does not
parse is wrong on every check. The captions come from a `Captioner`, in the tool the image2text task
itself, so that what is measured is what `generate_samples.py --generation-task image2text` writes.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from demo.captions import caption, parse_caption
from demo.composite_set import Composite
from demo.scoring import CHECKS
from demo.vocabulary import Scene

# (1-based number of the image in its file, its path) → its captions
Captioner = Callable[[int, str], list[str]]


@dataclass(frozen=True)
class CaptionVerdict:
    """One generated caption of one image and the scene it parses to (None: outside the templates)."""

    image: str
    expected: Scene
    caption: str
    parsed: Scene | None

    def correct(self, check: str) -> bool:
        """Whether the caption names the image's `check` ('background', 'foreground' or 'animal')."""
        return self.parsed is not None and getattr(self.parsed, check) == getattr(self.expected, check)

    @property
    def all_correct(self) -> bool:
        return self.parsed == self.expected

    def report_line(self) -> str:
        """`image2text<TAB>image<TAB>true caption (English)<TAB>generated caption<TAB>verdict`."""
        if self.parsed is None:
            verdict = "unparsed"
        elif self.all_correct:
            verdict = "ok"
        else:
            verdict = "wrong " + ", ".join(check for check in CHECKS if not self.correct(check))
        return "\t".join(["image2text", self.image, caption(self.expected, "en"), self.caption, verdict])


def check_captions(
    composites: Sequence[Composite], numbers: Sequence[int], captioner: Captioner, progress: bool = True
) -> list[CaptionVerdict]:
    """Caption each composite (`numbers[i]`: its 1-based number in its file) and check every caption."""
    verdicts = []
    pairs = list(zip(composites, numbers, strict=True))
    for composite, number in tqdm(pairs, desc="image2text", unit="img", disable=not progress):
        for text in captioner(number, str(composite.path)):
            verdicts.append(CaptionVerdict(composite.name, composite.scene, text, parse_caption(text)))
    return verdicts


def caption_summary(verdicts: Sequence[CaptionVerdict], images: int) -> str:
    """One line: how many captions of how many images, the parse rate and each check's accuracy."""
    rates = {
        "parse": [verdict.parsed is not None for verdict in verdicts],
        **{check: [verdict.correct(check) for verdict in verdicts] for check in CHECKS},
        "all right": [verdict.all_correct for verdict in verdicts],
    }
    figures = ", ".join(f"{name} {np.mean(hits) if hits else 0.0:.3f}" for name, hits in rates.items())
    return f"image2text: {len(verdicts)} captions of {images} images: {figures}"
