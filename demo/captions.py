"""Scene ↔ caption, in Chinese and English.

Chinese: `{bg}背景上的一只{fg}的{animal}` (蓝色背景上的一只红色的猫); English: `a {fg} {animal} on a {bg}
background` (a red cat on a blue background). `parse_caption` inverts both exactly; it is what checks that
a generated caption says the right thing, so it accepts only the two templates (after collapsing spaces
and, for English, ignoring case).
"""

import re
import string

from demo.vocabulary import ANIMALS, LANGUAGES, PALETTE, Scene

TEMPLATES = {
    "zh": "{bg}背景上的一只{fg}的{animal}",
    "en": "a {fg} {animal} on a {bg} background",
}


def _names(language: str) -> tuple[dict[str, int], dict[str, int]]:
    """Colour name → palette index and animal name → label, in `language`."""
    colours = {getattr(colour, language): i for i, colour in enumerate(PALETTE)}
    animals = {getattr(animal, language): i for i, animal in enumerate(ANIMALS)}
    return colours, animals


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"unknown caption language {language!r}; expected one of {', '.join(LANGUAGES)}.")


def caption(scene: Scene, language: str) -> str:
    """The caption of `scene` in `language` ('zh' or 'en')."""
    _check_language(language)
    return TEMPLATES[language].format(
        fg=getattr(PALETTE[scene.foreground], language),
        bg=getattr(PALETTE[scene.background], language),
        animal=getattr(ANIMALS[scene.animal], language),
    )


def template_literals(language: str) -> list[str]:
    """The fixed text between the template's fields, e.g. ['背景上的一只', '的'] for Chinese."""
    _check_language(language)
    return [literal for literal, *_ in string.Formatter().parse(TEMPLATES[language]) if literal]


def _pattern(language: str) -> re.Pattern:
    """The template as a regular expression with groups fg, bg and animal."""
    colours, animals = _names(language)
    # Longest names first, so that no name is matched by a prefix of another.
    choices = {
        "fg": sorted(colours, key=len, reverse=True),
        "bg": sorted(colours, key=len, reverse=True),
        "animal": sorted(animals, key=len, reverse=True),
    }
    parts = []
    for literal, field, _, _ in string.Formatter().parse(TEMPLATES[language]):
        parts.append(re.escape(literal))
        if field:
            parts.append(f"(?P<{field}>{'|'.join(map(re.escape, choices[field]))})")
    return re.compile("".join(parts))


_PATTERNS = {language: _pattern(language) for language in LANGUAGES}


def parse_caption(text: str) -> Scene | None:
    """The scene a caption in either template describes, or None if it is not one of them (or names
    the same colour twice)."""
    text = " ".join(text.split())
    for language, pattern in _PATTERNS.items():
        match = pattern.fullmatch(text.lower() if language == "en" else text)
        if match is None:
            continue
        colours, animals = _names(language)
        fg, bg = colours[match["fg"]], colours[match["bg"]]
        return Scene(animals[match["animal"]], fg, bg) if fg != bg else None
    return None
