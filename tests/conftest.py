"""Shared test fixtures: tokenizers (real and tiny), a tiny VQ-VAE, a tiny SentencePiece model, images."""

import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image, ImageDraw

import vqvae
from data_utils import unified_tokenizer
from data_utils.unified_tokenizer import UnifiedTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_SP_MODEL = REPO_ROOT / "pretrained" / "chinese_sentencepiece" / "cog-pretrain.model"

SHAPE_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
}
SHAPE_KINDS = ("circle", "square", "triangle")


def spread_codebook(model: vqvae.VQVAE, images: torch.Tensor) -> None:
    """Set a random VQ-VAE's codebook to random encoder outputs of ``images``, so the codes vary."""
    with torch.no_grad():
        latents = model.enc_b(images).reshape(-1, model.quantize_t.embed.shape[0])  # [n, dim]
        codebook = latents[torch.randperm(latents.shape[0])[: model.n_embed]].t()  # [dim, n_embed]
        model.quantize_t.embed.copy_(codebook)
        model.quantize_t.embed_avg.copy_(codebook)


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _isolated_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts as a plain single process with seeded global RNGs.

    A launcher's variables (the suite run under torchrun or DeepSpeed) would make code under test join a
    process group at MASTER_ADDR:MASTER_PORT; and a test that draws from the global RNGs (or reseeds
    them, as VQ-VAE training does) must not change what the next test draws.
    """
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


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


TINY_COGVIEW_SIZES = {
    "num_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "max_position_embeddings": 96,
}


@pytest.fixture(scope="session")
def tiny_cogview(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random tiny CogView saved in the released layouts, for end-to-end generation tests.

    * ``vqvae``: a ×32 VQ-VAE (256² px → 8×8 = 64 codes, size token ``[TINY]``; 128² → 4×4), its codebook
      spread over encoder outputs so that different images get different codes, and its decoder
      re-initialised with large weights so that different codes decode to visibly different images;
    * ``checkpoint``: a 2-layer, 32-wide ``GPT2Model`` with 96 positions over the unified vocabulary
      (64 image + the real 50000 text + 27 command ids, padded to 50176), saved by ``save_checkpoint``
      as ``{checkpoint}/latest_checkpointed_iteration.txt`` and ``{checkpoint}/142000/mp_rank_00_...``;
    * ``args``: the command-line arguments that describe it (``--max-position-embeddings-finetune 128``
      makes room for the super-resolution windows).
    """
    from model import GPT2Model
    from model.checkpoint import save_checkpoint
    from model.partition import padded_vocab_size

    folder = tmp_path_factory.mktemp("tiny_cogview")
    torch.manual_seed(0)
    image_model = vqvae.VQVAE(channel=8, embed_dim=8, n_embed=64, stride=10).eval()
    spread_codebook(image_model, torch.randn(2, 3, 256, 256) * 1.5)
    with torch.no_grad():
        convs = [
            layer
            for layer in image_model.dec.blocks
            if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
        ]
        for std, conv in zip([2.0] + [0.5] * (len(convs) - 1), convs, strict=True):
            torch.nn.init.normal_(conv.weight, std=std)
            torch.nn.init.zeros_(conv.bias)
    vqvae.save_vqvae(image_model, folder / "vqvae.pt")

    num_tokens = 64 + spm.SentencePieceProcessor(model_file=str(REAL_SP_MODEL)).GetPieceSize() + 27
    sizes = TINY_COGVIEW_SIZES
    model = GPT2Model(
        num_layers=sizes["num_layers"],
        vocab_size=padded_vocab_size(num_tokens, 1),
        hidden_size=sizes["hidden_size"],
        num_attention_heads=sizes["num_attention_heads"],
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=sizes["max_position_embeddings"],
        max_memory_length=0,
        checkpoint_activations=False,
    )
    save_checkpoint(model, folder / "checkpoint", 142000)
    args = [f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()]
    args += ["--max-position-embeddings-finetune=128"]
    return {"checkpoint": folder / "checkpoint", "vqvae": folder / "vqvae.pt", "args": args}
