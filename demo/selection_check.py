"""Post-selection on demo composites: does the caption model score the matching image above wrong ones?

For each composite of a file (the target) the candidates are the target itself and three wrong composites
of the same file, one per attribute, in this order: one whose animal differs, one whose foreground colour
differs and one whose background colour differs. Each is drawn among the composites that differ from the
target in that attribute and agree with it in both others, i.e. that differ in that attribute only; where
the file has none (a small split), among those that agree in one of the others, then in neither, and its
kind then names every difference ('animal and foreground'). The draw is uniform within that group, by a
generator seeded with (seed, the target's index in the file), so a target gets the same candidates
whatever `--limit`, and no composite is drawn twice for one target.

Every candidate is scored against each of the target's true captions (both languages) by a `Scorer`, in
the tool the post-selection task itself. A selection is right when the target scores strictly higher than
all three wrong candidates (a tie is a miss); the summary also gives, per kind of difference, how often the
target beats the candidates of that kind.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from demo.composite_set import Composite, CompositeSetError
from demo.vocabulary import Scene

ATTRIBUTES = ("animal", "foreground", "background")  # one wrong candidate per attribute, in this order
CANDIDATES = 1 + len(ATTRIBUTES)

# (caption, candidate image paths) → their scores, higher = better match
Scorer = Callable[[str, list[str]], Sequence[float]]


def differences(scene: Scene, other: Scene) -> tuple[str, ...]:
    """The attributes in which `other` differs from `scene`, in ATTRIBUTES order."""
    return tuple(name for name in ATTRIBUTES if getattr(other, name) != getattr(scene, name))


def kind_of(differing: Sequence[str]) -> str:
    """'animal only' for one differing attribute, 'animal and foreground' for several."""
    return f"{differing[0]} only" if len(differing) == 1 else " and ".join(differing)


def choose_candidates(scenes: Sequence[Scene], target: int, seed: int) -> list[int]:
    """Indices into `scenes`: `target`, then its three wrong candidates (see the module docstring)."""
    rng = np.random.default_rng([seed, target])
    wanted = scenes[target]
    chosen = [target]
    for attribute in ATTRIBUTES:
        others = [name for name in ATTRIBUTES if name != attribute]
        pool = [
            index
            for index, scene in enumerate(scenes)
            if getattr(scene, attribute) != getattr(wanted, attribute) and index not in chosen
        ]
        if not pool:
            raise CompositeSetError(
                f"no composite left whose {attribute} differs from composite {target + 1}'s: the file has "
                f"too few for {CANDIDATES - 1} wrong candidates."
            )
        shared = [sum(getattr(scenes[i], name) == getattr(wanted, name) for name in others) for i in pool]
        closest = [index for index, count in zip(pool, shared, strict=True) if count == max(shared)]
        chosen.append(closest[int(rng.integers(len(closest)))])
    return chosen


@dataclass(frozen=True)
class SelectionVerdict:
    """The scores of one target and its wrong candidates against one of the target's captions."""

    caption: str
    names: tuple[str, ...]  # the target's image first, then the wrong candidates'
    kinds: tuple[str, ...]  # each wrong candidate's kind of difference (kind_of)
    scores: tuple[float, ...]  # aligned with names

    @property
    def right(self) -> bool:
        """Whether the target scored strictly best."""
        return all(self.scores[0] > score for score in self.scores[1:])

    def beaten(self) -> list[tuple[str, bool]]:
        """(kind, whether the target scored higher) for each wrong candidate."""
        return [
            (kind, self.scores[0] > score) for kind, score in zip(self.kinds, self.scores[1:], strict=True)
        ]

    def report_line(self) -> str:
        """`post-selection<TAB>image<TAB>caption<TAB>name=score ...<TAB>verdict`."""
        scored = " ".join(f"{name}={score:.4f}" for name, score in zip(self.names, self.scores, strict=True))
        if self.right:
            verdict = "ok"
        else:
            best = max(range(1, CANDIDATES), key=lambda i: self.scores[i])
            verdict = f"wrong: {self.names[best]} ({self.kinds[best - 1]}) scored at least as high"
        return "\t".join(["post-selection", self.names[0], self.caption, scored, verdict])


def check_selection(
    composites: Sequence[Composite],
    targets: Sequence[int],
    scorer: Scorer,
    seed: int,
    progress: bool = True,
) -> list[SelectionVerdict]:
    """Score each target (an index into `composites`) and its wrong candidates against its captions."""
    scenes = [composite.scene for composite in composites]
    verdicts = []
    for target in tqdm(targets, desc="post-selection", unit="img", disable=not progress):
        chosen = [composites[index] for index in choose_candidates(scenes, target, seed)]
        kinds = tuple(kind_of(differences(chosen[0].scene, other.scene)) for other in chosen[1:])
        names = tuple(candidate.name for candidate in chosen)
        paths = [str(candidate.path) for candidate in chosen]
        for text in chosen[0].captions:
            scores = tuple(float(score) for score in scorer(text, paths))
            verdicts.append(SelectionVerdict(text, names, kinds, scores))
    return verdicts


def selection_summary(verdicts: Sequence[SelectionVerdict], images: int) -> str:
    """One line: the accuracy over all captions, then per kind how often the target beat such candidates."""
    beaten: dict[str, list[bool]] = {}
    for verdict in verdicts:
        for kind, won in verdict.beaten():
            beaten.setdefault(kind, []).append(won)
    accuracy = np.mean([verdict.right for verdict in verdicts]) if verdicts else 0.0
    kinds = ", ".join(f"{kind} {np.mean(wins):.3f} ({len(wins)})" for kind, wins in beaten.items())
    return (
        f"post-selection: {len(verdicts)} captions of {images} images, {CANDIDATES} candidates each: "
        f"matching image best {accuracy:.3f}; it beats the wrong image of kind {kinds}"
    )
