"""The demo's closed vocabulary: 8 palette colours and the 10 animals of animal-mnist, in both languages.

The RGB values, names and the label order are the data set's definition; every other module takes them
from here.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Colour:
    """A palette colour: English and Chinese names and its exact RGB value."""

    en: str
    zh: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Animal:
    """An animal-mnist class: English and Chinese names; its label is its index in `ANIMALS`."""

    en: str
    zh: str


PALETTE = (
    Colour("red", "红色", (220, 40, 40)),
    Colour("green", "绿色", (40, 170, 60)),
    Colour("blue", "蓝色", (40, 80, 220)),
    Colour("yellow", "黄色", (240, 210, 40)),
    Colour("purple", "紫色", (140, 60, 180)),
    Colour("orange", "橙色", (245, 140, 30)),
    Colour("white", "白色", (245, 245, 245)),
    Colour("black", "黑色", (20, 20, 20)),
)

# animal-mnist's label order: label i is ANIMALS[i].
ANIMALS = (
    Animal("bear", "熊"),
    Animal("bird", "鸟"),
    Animal("cat", "猫"),
    Animal("cow", "牛"),
    Animal("dog", "狗"),
    Animal("elephant", "大象"),
    Animal("giraffe", "长颈鹿"),
    Animal("horse", "马"),
    Animal("sheep", "羊"),
    Animal("zebra", "斑马"),
)

LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class Scene:
    """What a demo image shows: an animal (index into ANIMALS) in one palette colour on another."""

    animal: int
    foreground: int  # index into PALETTE
    background: int  # index into PALETTE, never equal to `foreground`

    def __post_init__(self):
        if not 0 <= self.animal < len(ANIMALS):
            raise ValueError(f"animal label {self.animal} is outside [0, {len(ANIMALS)}).")
        for colour in (self.foreground, self.background):
            if not 0 <= colour < len(PALETTE):
                raise ValueError(f"colour index {colour} is outside [0, {len(PALETTE)}).")
        if self.foreground == self.background:
            raise ValueError(f"foreground and background are both {PALETTE[self.foreground].en}.")


def colour_pairs() -> list[tuple[int, int]]:
    """Every (foreground, background) pair of different palette colours, 56 in all, in a fixed order."""
    return [(fg, bg) for fg in range(len(PALETTE)) for bg in range(len(PALETTE)) if fg != bg]


def all_scenes() -> list[Scene]:
    """Every animal × colour pair (560 scenes), animal-major: the prompt set the demo is measured on."""
    return [Scene(animal, fg, bg) for animal in range(len(ANIMALS)) for fg, bg in colour_pairs()]
