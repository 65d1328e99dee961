"""Where image files come from: a folder, or the members of a zip archive read with one handle per process.

Shared by the tokenizer trainer (``vqvae.image_files``) and the preprocessing tool (``preprocess.sources``),
so both accept the same files.
"""

import os
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from common.errors import InputError, MissingInputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def is_image_name(name: str) -> bool:
    """Whether a ``/``-separated file or member name is an image (macOS metadata, ``__MACOSX/``, is not)."""
    member = PurePosixPath(name)
    return (
        member.suffix.lower() in IMAGE_SUFFIXES
        and not name.startswith("__MACOSX/")
        and not member.name.startswith("._")
    )


def folder_image_names(root: str | os.PathLike) -> list[str]:
    """The image files under ``root`` (recursively), as sorted paths relative to it."""
    root = Path(root)
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(name for name in names if is_image_name(name))


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open a zip archive; one clear error if it is missing or not a zip."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Zip file {path} does not exist.")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise InputError(f"{path} is not a readable zip file ({error}).") from None


def zip_image_names(path: str | os.PathLike) -> list[str]:
    """The image members of the zip at ``path``, sorted by name."""
    with open_zip(path) as archive:
        return sorted(
            info.filename for info in archive.infolist() if not info.is_dir() and is_image_name(info.filename)
        )


class ZipArchive:
    """A zip archive opened on first use in each process.

    A handle inherited by a DataLoader worker would share its file offset with the parent, so every process
    opens its own; pickling (to send the object to a worker) drops the handle.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._archive: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_archive": None, "_pid": None}

    def _handle(self) -> zipfile.ZipFile:
        if self._archive is None or self._pid != os.getpid():
            self._archive, self._pid = open_zip(self.path), os.getpid()
        return self._archive

    def open(self, name: str) -> IO[bytes]:
        """The member ``name`` as a binary file; KeyError if there is none."""
        return self._handle().open(name)

    def read(self, name: str) -> bytes:
        """The bytes of member ``name``; KeyError if there is none."""
        return self._handle().read(name)
