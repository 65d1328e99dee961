"""Checking, before any work is done, that an output folder can be created and written.

A run that fails at its first save has lost everything before it (a model load, hours of training or
sampling); the same check at start-up costs a millisecond and names the problem in one line.
"""

import os
import tempfile
from pathlib import Path

from common.errors import InputError


class OutputFolderError(InputError):
    """An output folder that is a file, lies under a file, or cannot be created or written."""


def check_writable_folder(folder: str | os.PathLike, what: str | None = None) -> Path:
    """Create ``folder`` if needed and check that a file can be written in it; returns it as a Path.

    ``what`` names the folder in the error (e.g. ``"--output-path samples"``; default: the path).
    """
    folder = Path(folder)
    what = what or str(folder)
    blocking = next((path for path in (folder, *folder.parents) if path.exists() and not path.is_dir()), None)
    if blocking is not None:
        raise OutputFolderError(f"{what} is not a folder: {blocking} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputFolderError(f"cannot write in {what}: {error.strerror or error}") from None
    return folder
