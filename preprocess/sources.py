"""Where preprocessing reads its samples from: a captions file plus an image folder, or a zip of images.

Captions files (one sample per line, in order; blank lines are ignored):
  * TSV (any suffix but `.jsonl`): `path<TAB>caption`, split at the first TAB, no header line;
  * JSONL (`.jsonl`): `{"image": "path", "caption": "..."}` per line.
Image paths are relative to the image root (absolute paths work too), or name members of the zip.
A zip without a captions file contributes every image member in sorted name order, captioned by its file
stem ("cats/a red cat.png" → "a red cat"); macOS metadata (`__MACOSX/`, `._*`) is not an image and is left
out.
"""

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from common.errors import InputError, MissingInputError
from vqvae.image_sources import ZipArchive, open_zip, zip_image_names


class CaptionFileError(InputError):
    """A captions file line that cannot be parsed."""


@dataclass(frozen=True)
class Record:
    """One image-caption sample: `image` is a path under the image root or a zip member name."""

    image: str
    caption: str
    origin: str  # where the sample was listed, for reports: "captions.tsv:12" or "images.zip"


def _parse_tsv_line(line: str, where: str) -> tuple[str, str]:
    image, tab, caption = line.partition("\t")
    if not tab:
        raise CaptionFileError(f"{where}: expected 'path<TAB>caption' but the line has no TAB.")
    return image, caption


def _parse_jsonl_line(line: str, where: str) -> tuple[str, str]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise CaptionFileError(f"{where}: invalid JSON ({error.msg} at column {error.colno}).") from None
    if not isinstance(entry, dict):
        raise CaptionFileError(f"{where}: expected a JSON object with 'image' and 'caption'.")
    for key in ("image", "caption"):
        if not isinstance(entry.get(key), str):
            raise CaptionFileError(f"{where}: {key!r} is missing or not a string.")
    return entry["image"], entry["caption"]


def read_captions(path: str | os.PathLike) -> list[Record]:
    """Parse a TSV or JSONL captions file → records in file order; a bad line raises CaptionFileError."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Captions file {path} does not exist.")
    parse = _parse_jsonl_line if path.suffix.lower() == ".jsonl" else _parse_tsv_line
    records = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig").rstrip("\r\n")
            except UnicodeDecodeError:
                raise CaptionFileError(f"{where}: the line is not valid UTF-8.") from None
            if not line.strip():
                continue
            image, caption = parse(line, where)
            if not image.strip():
                raise CaptionFileError(f"{where}: the image path is empty.")
            if not caption.strip():
                raise CaptionFileError(f"{where}: the caption is empty.")
            records.append(Record(image.strip(), caption.strip(), where))
    return records


def zip_records(zip_path: str | os.PathLike) -> list[Record]:
    """Every image member of a zip in sorted name order, captioned by its file stem."""
    return [Record(name, PurePosixPath(name).stem, str(zip_path)) for name in zip_image_names(zip_path)]


class FolderImages:
    """Opens record images as files under `root`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def open(self, record: Record) -> Image.Image:
        """The record's image, opened lazily by PIL (decoding errors surface when it is read)."""
        path = self.root / record.image
        if not path.is_file():
            raise FileNotFoundError(f"no such file {path}")
        return Image.open(path)


class ZipImages:
    """Opens record images as members of a zip; the archive is opened once per process (safe with workers)."""

    def __init__(self, zip_path: str | os.PathLike):
        self.zip_path = Path(zip_path)
        open_zip(self.zip_path).close()
        self._archive = ZipArchive(self.zip_path)

    def open(self, record: Record) -> Image.Image:
        """The record's image, read from the zip into memory and opened by PIL."""
        try:
            data = self._archive.read(record.image)
        except KeyError:
            raise FileNotFoundError(f"no member {record.image} in {self.zip_path}") from None
        return Image.open(io.BytesIO(data))
