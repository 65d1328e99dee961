"""Writing files so that no reader, and no crash, ever sees a half-written one.

Every writer here follows one protocol: write to a hidden temporary name in the target's folder, flush
and fsync it, rename it into place (atomic within one file system), then fsync the folder so the rename
itself survives a power cut. On any failure, Ctrl-C included, the temporary file is removed and the old
target, if any, is left untouched. The temporary name keeps the target's suffix, so writers that pick a
format from the name (PIL) still do.
"""

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


def temporary_path(path: str | os.PathLike) -> Path:
    """A new, empty, hidden file beside ``path`` with the same suffix (created, so the name is unique).

    Created with the permissions of an ordinary new file (0666 less the umask), which ``mkstemp``'s 0600
    would not give the renamed result.
    """
    path = Path(path)
    while True:
        candidate = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return candidate


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to the disk (it may have been written by code that did not)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(folder: str | os.PathLike) -> None:
    """Make the entries of ``folder`` (a rename, a new file) durable."""
    fsync_file(folder)


def rename_into_place(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename a finished file or folder ``source`` over ``target`` and make the rename durable."""
    os.replace(source, target)
    fsync_directory(Path(target).parent)
    return Path(target)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without error it becomes ``path``.

    The folder is created if needed. On an exception the temporary file is removed and ``path`` keeps its
    old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        fsync_file(temporary)
        rename_into_place(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, which writes a file there by name, and make it ``path``."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a binary file that becomes ``path`` once ``write`` returns."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        write(file)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    return atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically (UTF-8 unless told otherwise)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a crash mid-save leaves the previous file intact."""
    return atomic_write(path, lambda file: torch.save(obj, file))


def numbered_names(stem: str, suffix: str = "") -> Iterator[str]:
    """``stem``, ``stem-1``, ``stem-2``, ... each followed by ``suffix``."""
    yield f"{stem}{suffix}"
    for number in itertools.count(1):
        yield f"{stem}-{number}{suffix}"


def write_new(folder: str | os.PathLike, stem: str, suffix: str, write: Callable[[Path], None]) -> Path:
    """Write a new file ``folder/{stem}{suffix}`` atomically, never replacing an existing file.

    ``write(temporary_path)`` writes the content. The finished file is hard-linked to the first free name
    among ``stem``, ``stem-1``, ...; a link fails if the name exists, so even concurrent processes cannot
    overwrite each other. Returns the name taken.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(folder / f"{stem}{suffix}")
    try:
        write(temporary)
        fsync_file(temporary)
        for name in numbered_names(stem, suffix):
            try:
                os.link(temporary, folder / name)
            except FileExistsError:
                continue
            fsync_directory(folder)
            return folder / name
    finally:
        temporary.unlink(missing_ok=True)
    raise AssertionError("unreachable: numbered_names never ends")
