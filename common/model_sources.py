"""Which model each launcher uses: the released weights when present, else the bundled demo models.

One source for the choice, used by ``scripts/generation_common.sh`` (text2image, image2text, post-selection,
super-resolution) and meant for the web demo too. For a *role*, the first that applies:

1. ``--load`` among the user's arguments, or a ``CHECKPOINT_PATH``: that model, nothing added but the
   VQ-VAE (``IMG_TOKENIZER_PATH``, else the released one);
2. the released weights: ``{pretrained}/cogview/{cogview-base|cogview-caption|cogview-sr}/`` with its
   tracker, and ``{pretrained}/vqvae/vqvae_hard_biggerset_011.pt``; text2image also gets cogview-caption
   as its ``--post-select-load`` scorer when it is there (loaded only with ``--post-select K > 1``);
3. the bundled demo models: the role's entry of the manifest ``{pretrained}/demo/models.args``, if every
   file it names is there;
4. otherwise the released paths, so that ``generate_samples.py`` stops with its one line saying where
   the released weights go.

The manifest holds one entry per line, ``role: arguments`` (split as a shell would; ``#`` starts a
comment). ``common:`` arguments (the architecture, the tokenizers) go before every role's own; paths are
relative to the manifest's folder, so a bundle can be moved (``PRETRAINED_DIR``). Roles: ``text2image``
(what ``cogview-base`` does), ``caption`` (image2text and post-selection, ``cogview-caption``) and
``super-resolution`` (``cogview-sr``); a role's own arguments come after ``common:``, so they may give it
another architecture. The web demo's role ``web`` is text2image with ``--load-caption`` and ``--load-sr``
added for the others present (unless the user's arguments name that folder themselves); one whose
architecture (``ARCHITECTURE_FLAGS``) differs from the text2image model's gets it as its own model
arguments, ``--caption-model-args=...`` or ``--sr-model-args=...``, which the web server parses on top of the
others for that model only. For example::

    common: --num-layers 4 --hidden-size 256 --num-attention-heads 8 --max-position-embeddings 84
    common: --img-tokenizer-path vqvae_demo.pt --text-tokenizer-path demo_text.model --top_k 0
    text2image: --load text2image --post-select-load caption
    caption: --load caption

Run as ``python -m common.model_sources ROLE [ARGS...]``: prints the source (``ModelChoice.source``), then
the arguments to use, one per line, on stdout, and the one line saying which model it is on stderr.
"""

import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError
from common.paths import PRETRAINED

RELEASED_FOLDERS = {
    "text2image": "cogview-base",
    "caption": "cogview-caption",
    "super-resolution": "cogview-sr",
}
# The web demo's extra models: role → (its folder option, its model-arguments option) of web/server.py.
WEB_ROLES = {
    "caption": ("--load-caption", "--caption-model-args"),
    "super-resolution": ("--load-sr", "--sr-model-args"),
}
ROLES = (*RELEASED_FOLDERS, "web")
MANIFEST = Path("demo") / "models.args"
RELEASED_VQVAE = Path("vqvae") / "vqvae_hard_biggerset_011.pt"
TRACKER = "latest_checkpointed_iteration.txt"
# What a bundled model of another role passes to the web demo as its own model arguments when it differs
# from the text2image model's.
ARCHITECTURE_FLAGS = (
    "--num-layers",
    "--hidden-size",
    "--num-attention-heads",
    "--max-position-embeddings",
    "--max-position-embeddings-finetune",
    "--make-vocab-size-divisible-by",
)
PATH_FLAGS = frozenset(
    {
        "--load",
        "--load-caption",
        "--load-sr",
        "--post-select-load",
        "--img-tokenizer-path",
        "--text-tokenizer-path",
    }
)
MULTI_PATH_FLAGS = frozenset({"--post-select-load"})  # one or more folders (nargs="+")


class ManifestError(InputError):
    """The bundled models' manifest cannot be read or names a role or argument wrongly."""


@dataclass(frozen=True)
class ModelChoice:
    """The arguments that select a role's model, and the line saying which it is (None: nothing to say).

    ``source``: ``given``, ``released``, ``bundled``, or ``missing`` (the arguments then name the released
    paths, for ``generate_samples.py`` to report).
    """

    source: str
    arguments: list[str]
    notice: str | None


def read_manifest(path: Path) -> dict[str, list[str]]:
    """``role → arguments`` of the manifest at ``path``, ``common`` arguments first, paths made absolute."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot be read: {error}") from None
    entries: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as error:
            raise ManifestError(f"{path}, line {number}: {error}") from None
        if not words:
            continue
        role = words[0].removesuffix(":")
        if not words[0].endswith(":") or role not in ("common", *RELEASED_FOLDERS):
            raise ManifestError(
                f"{path}, line {number}: expected 'ROLE: arguments' with ROLE one of common, "
                f"{', '.join(RELEASED_FOLDERS)}; got {words[0]!r}"
            )
        entries.setdefault(role, []).extend(_absolute_paths(words[1:], path.parent))
    common = entries.pop("common", [])
    return {role: [*common, *arguments] for role, arguments in entries.items()}


def _path_slots(words: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    """``(index, prefix, path)`` for each path a path flag of ``words`` names: prefix ``""`` when the
    path is a word of its own (``--load DIR``; every word up to the next option after a
    ``MULTI_PATH_FLAGS`` flag), ``"--flag="`` when it is joined to its flag (``--load=DIR``)."""
    taking = None  # the path flag whose separate values come next
    for index, word in enumerate(words):
        if word.startswith("--"):
            flag, equals, value = word.partition("=")
            if equals and flag in PATH_FLAGS:
                yield index, f"{flag}=", value
            taking = word if not equals and word in PATH_FLAGS else None
        elif taking is not None:
            yield index, "", word
            taking = taking if taking in MULTI_PATH_FLAGS else None


def _absolute_paths(words: list[str], folder: Path) -> list[str]:
    """``words`` with each path flag's value (``--load DIR``, ``--load=DIR``) read relative to ``folder``."""
    absolute = list(words)
    for index, prefix, path in _path_slots(words):
        absolute[index] = f"{prefix}{folder / path}"
    return absolute


def _named_paths(arguments: Sequence[str]) -> list[Path]:
    """The paths the path flags of ``arguments`` name, in both spellings."""
    return [Path(path) for _, _, path in _path_slots(arguments)]


def _flag_value(arguments: Sequence[str], flag: str) -> str | None:
    """The value ``flag`` gets in ``arguments`` (the last one, as argparse reads it), in both spellings."""
    value = None
    for index, word in enumerate(arguments):
        if word.startswith(f"{flag}="):
            value = word.removeprefix(f"{flag}=")
        elif word == flag and index + 1 < len(arguments):
            value = arguments[index + 1]
    return value


def _load_value(arguments: Sequence[str]) -> str | None:
    """The folder ``--load`` names in ``arguments``."""
    return _flag_value(arguments, "--load")


def _architecture(arguments: Sequence[str]) -> dict[str, str | None]:
    """The value of each architecture flag in ``arguments`` (None where a flag is absent)."""
    return {flag: _flag_value(arguments, flag) for flag in ARCHITECTURE_FLAGS}


def _web_extra(
    flags: tuple[str, str], folder: str, arguments: Sequence[str], base: Sequence[str]
) -> list[str]:
    """The web demo's arguments for a model of ``arguments`` in ``folder`` beside a text2image model of
    ``base``: its folder option, and its architecture as its own model arguments if that differs."""
    load_flag, args_flag = flags
    architecture = _architecture(arguments)
    if architecture == _architecture(base):
        return [load_flag, folder]
    own = [word for flag, value in architecture.items() if value is not None for word in (flag, value)]
    return [load_flag, folder, f"{args_flag}={shlex.join(own)}"]


def _is_checkpoint(folder: Path) -> bool:
    return (folder / TRACKER).is_file()


def _released(role: str, pretrained: Path, user_arguments: Sequence[str]) -> ModelChoice | None:
    vqvae = pretrained / RELEASED_VQVAE
    folder = pretrained / "cogview" / RELEASED_FOLDERS["text2image" if role == "web" else role]
    if not (_is_checkpoint(folder) and vqvae.is_file()):
        return None
    arguments = ["--load", str(folder), "--img-tokenizer-path", str(vqvae)]
    caption = pretrained / "cogview" / RELEASED_FOLDERS["caption"]
    if role == "text2image" and _is_checkpoint(caption):
        arguments += ["--post-select-load", str(caption)]  # scores --post-select K candidates (K > 1 only)
    if role == "web":
        for other, (flag, _) in WEB_ROLES.items():
            extra = pretrained / "cogview" / RELEASED_FOLDERS[other]
            if _flag_value(user_arguments, flag) is None and _is_checkpoint(extra):
                arguments += [flag, str(extra)]
    return ModelChoice("released", arguments, f"using the released CogView weights in {folder}")


def _bundled(role: str, pretrained: Path, user_arguments: Sequence[str]) -> ModelChoice | None:
    manifest = pretrained / MANIFEST
    if not manifest.is_file():
        return None
    entries = read_manifest(manifest)
    own = entries.get("text2image" if role == "web" else role)
    if own is None or not all(path.exists() for path in _named_paths(own)):
        return None
    arguments = list(own)
    notice = (
        f"the released weights are not in {pretrained / 'cogview'}; using the bundled demo models "
        f"({manifest})"
    )
    if role == "web":
        for other, flags in WEB_ROLES.items():
            extra = entries.get(other, [])
            load = _load_value(extra)
            if _flag_value(user_arguments, flags[0]) is not None or load is None:
                continue
            if all(path.exists() for path in _named_paths(extra)):
                arguments += (added := _web_extra(flags, load, extra, own))
                if len(added) > 2:
                    notice += f"; its {other} model with its own architecture ({flags[1]})"
    return ModelChoice("bundled", arguments, notice)


def choose_model(
    role: str,
    user_arguments: Sequence[str] = (),
    pretrained: Path = PRETRAINED,
    checkpoint: str | None = None,
    vqvae: str | None = None,
) -> ModelChoice:
    """The model of ``role``, chosen in the module docstring's order.

    ``checkpoint`` and ``vqvae`` are the launchers' ``CHECKPOINT_PATH`` and ``IMG_TOKENIZER_PATH``.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    given_vqvae = ["--img-tokenizer-path", vqvae or str(pretrained / RELEASED_VQVAE)]
    if _load_value(user_arguments) is not None:
        return ModelChoice("given", given_vqvae, None)
    if checkpoint:
        return ModelChoice("given", ["--load", checkpoint, *given_vqvae], None)
    choice = _released(role, pretrained, user_arguments) or _bundled(role, pretrained, user_arguments)
    if choice is not None:
        extra = ["--img-tokenizer-path", vqvae] if vqvae else []
        return ModelChoice(choice.source, [*choice.arguments, *extra], choice.notice)
    folder = pretrained / "cogview" / RELEASED_FOLDERS["text2image" if role == "web" else role]
    return ModelChoice("missing", ["--load", str(folder), *given_vqvae], None)


def main(argv: Sequence[str]) -> int:
    """``ROLE [USER ARGS...]`` → source and arguments on stdout, one per line; the notice on stderr."""
    role, *user_arguments = argv
    try:
        choice = choose_model(
            role,
            user_arguments,
            Path(os.environ.get("PRETRAINED_DIR") or PRETRAINED),
            os.environ.get("CHECKPOINT_PATH") or None,
            os.environ.get("IMG_TOKENIZER_PATH") or None,
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if choice.notice:
        print(f"{role} model: {choice.notice}", file=sys.stderr)
    if any("\n" in argument for argument in choice.arguments):
        print(f"error: a model path contains a line break: {choice.arguments!r}", file=sys.stderr)
        return 2
    print("\n".join([choice.source, *choice.arguments]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
