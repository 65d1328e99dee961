"""A dataset of image files from a folder (searched recursively) or a zip archive, for tokenizer training."""

import os
import zipfile
from pathlib import Path

import torch
from torch.utils.data import Dataset

from common.errors import InputError, MissingInputError
from vqvae.image_sources import IMAGE_SUFFIXES, ZipArchive, folder_image_names, zip_image_names
from vqvae.images import ImageReadError, image_to_tensor, open_image


class NoImagesError(InputError):
    """A folder or zip archive without any image file."""


class ImageFiles(Dataset):
    """Images under `source` (a folder, recursively, or a .zip), preprocessed like `read_img`.

    Item i is `(tensor [3, S, S] or None, name, error)`: an unreadable image gives None and the reason, so
    that a training loop can skip it and count it instead of crashing on one bad file.
    """

    def __init__(self, source: str | os.PathLike, img_size: int):
        self.source = Path(source)
        self.img_size = img_size
        self.is_folder = self.source.is_dir()
        if self.is_folder:
            self.names = folder_image_names(self.source)
        elif self.source.is_file() and zipfile.is_zipfile(self.source):
            self.names = zip_image_names(self.source)
        elif self.source.exists():
            raise NoImagesError(f"{self.source} is neither a folder nor a zip archive of images.")
        else:
            raise MissingInputError(f"Image folder or zip not found: {self.source}")
        if not self.names:
            suffixes = ", ".join(IMAGE_SUFFIXES)
            raise NoImagesError(f"No image files ({suffixes}) found in {self.source}.")
        self._archive = None if self.is_folder else ZipArchive(self.source)

    def __len__(self) -> int:
        return len(self.names)

    def _open(self, name: str):
        return open(self.source / name, "rb") if self._archive is None else self._archive.open(name)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, str, str]:
        name = self.names[index]
        label = f"{self.source}/{name}" if self.is_folder else f"{self.source}:{name}"
        try:
            with self._open(name) as handle, open_image(handle, label) as image:
                return image_to_tensor(image, self.img_size, name=label)[0], label, ""
        except ImageReadError as error:
            return None, label, str(error)
        except (OSError, zipfile.BadZipFile) as error:  # the file or zip member itself cannot be read
            return None, label, f"Cannot read image {label}: {error}"
