"""Shared test fixtures: tokenizers (real and tiny), a tiny VQ-VAE, a tiny SentencePiece model, images."""

import random
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image, ImageDraw

import vqvae
from data_utils import unified_tokenizer
from data_utils.unified_tokenizer import UnifiedTokenizer
from tools.make_tiny_cogview import make_tiny_cogview, spread_codebook

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SP_MODEL = REPO_ROOT / "pretrained" / "chinese_sentencepiece" / "cog-pretrain.model"

SHAPE_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
}
SHAPE_KINDS = ("circle", "square", "triangle")


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _isolated_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts as a plain single process with seeded global RNGs and Python's Ctrl-C handler.

    A launcher's variables (the suite run under torchrun or DeepSpeed) would make code under test join a
    process group at MASTER_ADDR:MASTER_PORT; and a test that draws from the global RNGs (or reseeds
    them, as VQ-VAE training does) must not change what the next test draws. A suite started in the
    background (``nohup … &``) inherits SIGINT ignored, which the Ctrl-C tests (and their children) need
    handled as in a terminal.
    """
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous_sigint)


@pytest.fixture(scope="session")
def real_sp() -> spm.SentencePieceProcessor:
    """The released SentencePiece model, loaded directly (an independent reference for the tokenizer)."""
    return spm.SentencePieceProcessor(model_file=str(REAL_SP_MODEL))


@pytest.fixture(scope="session")
def real_tokenizer() -> UnifiedTokenizer:
    """The released layout without an image model: 8192 image ids, cog-pretrain text, 27 commands."""
    return UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=8192)


@pytest.fixture(scope="session")
def tiny_vqvae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ×8 VQ-VAE (64 codes of dim 8) whose codebook is spread over encoder outputs, so codes vary."""
    torch.manual_seed(0)
    model = vqvae.VQVAE(channel=16, embed_dim=8, n_embed=64, stride=6).eval()
    spread_codebook(model, torch.randn(4, 3, 64, 64) * 1.5)
    path = tmp_path_factory.mktemp("vqvae") / "tiny_vqvae.pt"
    vqvae.save_vqvae(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_vqvae(tiny_vqvae_path: Path) -> vqvae.VQVAE:
    """The tiny VQ-VAE loaded on its own (an independent reference for image encoding)."""
    return vqvae.load_vqvae(tiny_vqvae_path)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_vqvae_path: Path) -> UnifiedTokenizer:
    """Unified tokenizer with the tiny VQ-VAE (64 image ids) and the released text model."""
    return UnifiedTokenizer(tiny_vqvae_path, "cpu")


@pytest.fixture(scope="session")
def tiny_sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-piece SentencePiece model trained on generated English/Chinese captions (≈0.3 s)."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["a", "red", "circle", "猫", "一只"]
    words += ["".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(300)]
    words += ["".join(chr(0x4E00 + rng.randrange(300)) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    folder = tmp_path_factory.mktemp("sp")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=8)) for _ in range(2000)), encoding="utf-8")
    spm.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(folder / "tiny"), vocab_size=300, model_type="bpe", minloglevel=2
    )
    return folder / "tiny.model"


@pytest.fixture(scope="module")
def one_thread_per_module():
    """One torch thread for a module of tiny-model tests (up to 20× faster on a busy machine).

    Their ops are too small to share between threads.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_tokenizer_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    """No process-wide tokenizer during the test (whatever was installed before is restored afterwards)."""
    monkeypatch.setattr(unified_tokenizer, "_TOKENIZER", None)


def shape_image(index: int, size: int = 64) -> tuple[Image.Image, str]:
    """A noisy background with one coloured shape, and its caption; deterministic in `index`."""
    rng = random.Random(index)
    colour_name = rng.choice(sorted(SHAPE_COLOURS))
    kind = rng.choice(SHAPE_KINDS)
    # Gaussian noise around mid-grey, a different spread per channel; numpy's seeded generator, not
    # PIL's effect_noise, which draws from C rand() and differs from run to run.
    sigmas = np.array([40, 50, 60])
    noise = np.random.default_rng(index).normal(128.0, sigmas, (size, size, 3))
    image = Image.fromarray(noise.round().clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
    x1, y1 = x0 + size // 3 + rng.randrange(size // 6), y0 + size // 3 + rng.randrange(size // 6)
    colour = SHAPE_COLOURS[colour_name]
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
    return image, f"a {colour_name} {kind} 一个{kind}"


@pytest.fixture
def make_shape_images():
    """Factory: write `count` shape images (PNG, `size`²) into `folder` → list of (file name, caption)."""

    def make(folder: Path, count: int, size: int = 64, start: int = 0) -> list[tuple[str, str]]:
        folder.mkdir(parents=True, exist_ok=True)
        pairs = []
        for index in range(start, start + count):
            image, caption = shape_image(index, size)
            name = f"shape_{index:03d}.png"
            image.save(folder / name)
            pairs.append((name, caption))
        return pairs

    return make


@pytest.fixture(scope="session")
def tiny_cogview(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random tiny CogView saved in the released layouts, for end-to-end generation tests.

    Made by ``tools/make_tiny_cogview.py`` (see there): ``vqvae``, a ×32 VQ-VAE (256² px → 8×8 = 64 codes,
    size token ``[TINY]``; 128² → 4×4); ``checkpoint``, a 2-layer, 32-wide ``GPT2Model`` with 96 positions
    over the unified vocabulary (64 image + the real 50000 text + 27 command ids, padded to 50176) in
    ``{checkpoint}/142000/mp_rank_00_...``; ``args``, the command-line arguments that describe it
    (``--max-position-embeddings-finetune 128`` makes room for the super-resolution windows).
    """
    return make_tiny_cogview(tmp_path_factory.mktemp("tiny_cogview"))
