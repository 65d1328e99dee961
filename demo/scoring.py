"""Scoring images against their prompts from the pixels: background, foreground colour and animal.

Each prompt is parsed back to its scene (`demo.captions.parse_caption`); each image is read by
`demo.evaluation.read_image` and its mask classified by the animal classifier. A prompt outside the two
caption templates cannot be checked and counts as unparsed, not as a failure of the image.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from demo.captions import parse_caption
from demo.classifier import AnimalClassifier, predict
from demo.evaluation import read_image
from demo.vocabulary import ANIMALS, PALETTE, Scene

CHECKS = ("background", "foreground", "animal")


@dataclass(frozen=True)
class ScoredImage:
    """One image's verdict: what the prompt asks for and what the pixels show (None: not found)."""

    name: str
    prompt: str
    expected: Scene | None
    background: int
    foreground: int | None
    animal: int | None

    def correct(self, check: str) -> bool:
        """Whether `check` ('background', 'foreground' or 'animal') matches the prompt."""
        if self.expected is None:
            return False
        return getattr(self, check) == getattr(self.expected, check)

    @property
    def all_correct(self) -> bool:
        return all(self.correct(check) for check in CHECKS)

    def report_line(self) -> str:
        """`name<TAB>prompt<TAB>background<TAB>foreground<TAB>animal<TAB>ok`, names in English."""
        found = [
            PALETTE[self.background].en,
            PALETTE[self.foreground].en if self.foreground is not None else "-",
            ANIMALS[self.animal].en if self.animal is not None else "-",
        ]
        verdict = "unparsed prompt" if self.expected is None else ("ok" if self.all_correct else "wrong")
        return "\t".join([self.name, self.prompt, *found, verdict])


REPORT_HEADER = "image\tprompt\tbackground\tforeground\tanimal\tverdict"


def score_images(
    images: Sequence[np.ndarray], names: Sequence[str], prompts: Sequence[str], classifier: AnimalClassifier
) -> list[ScoredImage]:
    """Score square RGB images (each [H, H, 3], 0..255) against `prompts`, aligned one to one."""
    readings = [read_image(image) for image in images]
    masks = np.stack([reading.mask for reading in readings]) if readings else np.zeros((0, 32, 32))
    animals = predict(classifier, masks.astype(np.float32))
    return [
        ScoredImage(
            name,
            prompt,
            parse_caption(prompt),
            reading.background,
            reading.foreground,
            int(animal) if reading.foreground is not None else None,
        )
        for name, prompt, reading, animal in zip(names, prompts, readings, animals, strict=True)
    ]


@dataclass(frozen=True)
class ScoreSummary:
    """Accuracies over the images whose prompt parsed (`scored` of them; `unparsed` others)."""

    scored: int
    unparsed: int
    accuracy: dict[str, float]  # per check, and "all" for all three at once


def summarize(results: Sequence[ScoredImage]) -> ScoreSummary:
    """Accuracy of each check and of all three together."""
    scored = [result for result in results if result.expected is not None]
    accuracy = {
        check: float(np.mean([result.correct(check) for result in scored])) if scored else 0.0
        for check in CHECKS
    }
    accuracy["all"] = float(np.mean([result.all_correct for result in scored])) if scored else 0.0
    return ScoreSummary(len(scored), len(results) - len(scored), accuracy)


def summary_text(summary: ScoreSummary) -> str:
    """One line: how many images, each accuracy to three decimals, and the unparsed prompts if any."""
    parts = [f"{name} {summary.accuracy[name]:.3f}" for name in (*CHECKS, "all")]
    text = f"{summary.scored} images: " + ", ".join(parts).replace("all ", "all three ")
    if summary.unparsed:
        text += f" ({summary.unparsed} prompts outside the demo templates were not scored)"
    return text
