"""The animal classifier of the demo scorer: a small CNN on 32×32 silhouette masks (colour-blind by design).

It sees only the mask `demo.evaluation.read_image` extracts, so colours cannot leak into the animal
decision, and it is trained on the masks of the train split's composites, read through that same function.
Saved as a plain state dict plus its shape (a few hundred kB), loadable with `torch.load(weights_only=True)`.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.atomic_files import atomic_torch_save
from common.errors import InputError, MissingInputError
from demo.captions import parse_caption
from demo.evaluation import CLASSIFIER_SIDE, read_image
from demo.vocabulary import ANIMALS
from preprocess.sources import Record

CLASSIFIER_FORMAT = "cogview-demo-animal-classifier-1"


class ClassifierFileError(InputError):
    """A file that is not a saved demo animal classifier."""


def _stage(in_channels: int, out_channels: int) -> list[nn.Module]:
    """Conv 3×3 → BatchNorm → ReLU → 2×2 max-pool: halves the side."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]


class AnimalClassifier(nn.Module):
    """Masks [b, 1, 32, 32] → animal logits [b, 10]: three conv stages (32 → 4 px) and a linear layer."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            *_stage(1, width), *_stage(width, 2 * width), *_stage(2 * width, 4 * width)
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(4 * width * (CLASSIFIER_SIDE // 8) ** 2, len(ANIMALS))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(masks).flatten(1)))


@dataclass(frozen=True)
class ClassifierTraining:
    """Options of `train_classifier`."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    max_shift: int = 1  # random translation (pixels at 32×32) applied to each training mask
    max_blur: float = 1.2  # Gaussian sigma (pixels) of the random blur-and-threshold applied to each batch
    seed: int = 0


def _shifted(masks: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each mask [b, 1, S, S] translated by its own random offset in [-max_shift, max_shift], zero-filled."""
    if max_shift == 0:
        return masks
    padded = F.pad(masks, (max_shift,) * 4)
    side = masks.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (masks.shape[0], 2), generator=generator)
    return torch.stack(
        [padded[i, :, y : y + side, x : x + side] for i, (y, x) in enumerate(offsets.tolist())]
    )


def _reshaped(masks: torch.Tensor, max_blur: float, generator: torch.Generator) -> torch.Tensor:
    """Binary masks [b, 1, S, S] blurred by a random Gaussian (sigma ≤ max_blur) and thresholded at a random
    level in [0.35, 0.65]: edges round off, thin parts thicken or vanish, as through an image tokenizer."""
    sigma = float(torch.rand((), generator=generator)) * max_blur
    if sigma < 0.2:
        return masks
    radius = int(3 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=masks.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(masks, kernel.view(1, 1, 1, -1), padding=(0, radius))
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    level = 0.35 + 0.3 * float(torch.rand((), generator=generator))
    return (blurred >= level).to(masks.dtype)


def train_classifier(
    masks: np.ndarray, labels: np.ndarray, config: ClassifierTraining, progress: bool = True
) -> AnimalClassifier:
    """Fit a classifier to `masks` [n, 32, 32] in [0, 1] with `labels` [n] (Adam, cosine learning rate)."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = AnimalClassifier()
    inputs = torch.from_numpy(masks).float().unsqueeze(1)  # [n, 1, 32, 32]
    targets = torch.from_numpy(labels).long()
    steps_per_epoch = -(-len(inputs) // config.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * steps_per_epoch)
    model.train()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="classifier", unit="step", disable=not progress)
    with bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(inputs), config.batch_size):
                batch = order[start : start + config.batch_size]
                shifted = _shifted(inputs[batch], config.max_shift, generator)
                logits = model(_reshaped(shifted, config.max_blur, generator))
                loss = F.cross_entropy(logits, targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update(1)
    return model.eval()


@torch.no_grad()
def predict(model: AnimalClassifier, masks: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Animal labels [n] of masks [n, 32, 32]."""
    inputs = torch.from_numpy(masks).float().unsqueeze(1)
    return torch.cat(
        [model(inputs[i : i + batch_size]).argmax(-1) for i in range(0, len(inputs), batch_size)]
    ).numpy()


def save_classifier(model: AnimalClassifier, path: str | os.PathLike) -> None:
    """Write the classifier atomically: its format tag, width and state dict."""
    atomic_torch_save(
        {"format": CLASSIFIER_FORMAT, "width": model.width, "state_dict": model.state_dict()}, path
    )


def load_classifier(path: str | os.PathLike) -> AnimalClassifier:
    """Read a classifier written by `save_classifier` (eval mode); other files raise ClassifierFileError."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Animal classifier {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise ClassifierFileError(f"{path} is truncated or not a torch file.") from error
    if not isinstance(state, dict) or state.get("format") != CLASSIFIER_FORMAT:
        raise ClassifierFileError(f"{path} is not a demo animal classifier ({CLASSIFIER_FORMAT}).")
    try:
        model = AnimalClassifier(state["width"])
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError) as error:  # RuntimeError: missing/unexpected keys, shapes
        raise ClassifierFileError(f"{path} does not hold a complete demo animal classifier.") from error
    return model.eval()


def labelled_masks(records: list[Record], pixels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Masks [n, 32, 32] (as the scorer reads them) and animal labels [n] of the distinct images of
    `records`, each labelled by its first caption; a caption outside the templates raises InputError."""
    first: dict[str, Record] = {}
    for record in records:
        first.setdefault(record.image, record)
    masks, labels = [], []
    for name, record in first.items():
        scene = parse_caption(record.caption)
        if scene is None:
            raise InputError(f"{record.origin}: {record.caption!r} is not a demo caption.")
        masks.append(read_image(pixels[name]).mask)
        labels.append(scene.animal)
    return np.stack(masks), np.array(labels, dtype=np.int64)
