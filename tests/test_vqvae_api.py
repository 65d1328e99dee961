"""VQ-VAE API: img2code/code2img, load/save in the released format with clear errors, image reading."""

import argparse
import io
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

import vqvae
from vqvae import (
    IMAGE_MEAN,
    IMAGE_STD,
    VQVAE,
    ImageReadError,
    VQVAECheckpointError,
    code2img,
    denormalize,
    image_to_tensor,
    img2code,
    load_vqvae,
    normalize,
    read_img,
    save_images,
    save_picture,
    save_vqvae,
    to_pil,
)
from vqvae.checkpoint import atomic_torch_save


@pytest.fixture(scope="module")
def tiny():
    """A tiny ×4 model with a spread-out codebook, so that different latents get different codes."""
    torch.manual_seed(0)
    model = VQVAE(channel=16, embed_dim=8, n_embed=64, stride=4).eval()
    model.quantize_t.embed.mul_(0.1)
    return model


# ---------------------------------------------------------------- img2code / code2img


def test_new_model_is_the_released_configuration():
    with torch.device("meta"):
        model = vqvae.new_model()
    assert model.config == {
        "in_channel": 3,
        "channel": 512,
        "embed_dim": 256,
        "n_embed": 8192,
        "stride": 6,
        "decay": 0.99,
    }


def test_img2code_returns_raster_order_codes_of_the_nearest_neighbours(tiny):
    img = torch.randn(3, 3, 16, 24)
    codes = img2code(tiny, img)
    assert codes.shape == (3, 4 * 6) and codes.dtype == torch.long
    latent = tiny.enc_b(img)  # [b, 4, 6, d]
    for b in range(3):
        for row in range(4):
            for col in range(6):
                expected = tiny.quantize_t.nearest(latent[b, row, col].unsqueeze(0)).item()
                assert codes[b, row * 6 + col].item() == expected
    assert len(codes.unique()) > 4
    assert not codes.requires_grad


def test_code2img_decodes_a_batch_like_one_by_one_in_both_input_layouts(tiny):
    codes = torch.randint(0, 64, (3, 25))
    batch_flat = code2img(tiny, codes)
    batch_grid = code2img(tiny, codes.view(3, 5, 5))
    assert batch_flat.shape == (3, 3, 20, 20)
    one_by_one = torch.cat([code2img(tiny, c.unsqueeze(0)) for c in codes])
    torch.testing.assert_close(batch_flat, one_by_one)
    torch.testing.assert_close(batch_grid, one_by_one)
    # De-normalised from the decoder's output: x * std + mean.
    raw = tiny.decode_code(codes.view(3, 5, 5))
    std, mean = torch.tensor(IMAGE_STD).view(3, 1, 1), torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    torch.testing.assert_close(batch_flat, raw * std + mean)


def test_code2img_does_not_clamp(tiny):
    model = VQVAE(channel=16, embed_dim=8, n_embed=64, stride=4).eval()
    model.load_state_dict(tiny.state_dict())
    model.dec.blocks[-1].bias.data.fill_(5.0)
    image = code2img(model, torch.zeros(1, 4, dtype=torch.long))
    assert image.max() > 1.5


def test_code2img_rejects_bad_codes(tiny):
    with pytest.raises(ValueError, match="10 codes per image, which is not a square"):
        code2img(tiny, torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[b, h, w\] or \[b, h\*w\], got \[4\]"):
        code2img(tiny, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside the codebook \[0, 64\)"):
        code2img(tiny, torch.full((1, 4), 64))


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(("stride", "factor"), [(2, 2), (4, 4), (6, 8)])
def test_save_load_round_trip_infers_the_configuration(tmp_path, stride, factor):
    torch.manual_seed(1)
    model = VQVAE(channel=8, embed_dim=4, n_embed=12, stride=stride)
    model.quantize_t.cluster_size.uniform_()
    path = tmp_path / "sub" / "vq.pt"
    save_vqvae(model, path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    assert all(v.dtype == torch.float32 for v in raw.values())
    assert [p.name for p in path.parent.iterdir()] == ["vq.pt"]  # no temporary file left behind

    loaded = load_vqvae(path)
    assert not loaded.training
    assert loaded.downsample_factor == factor
    assert loaded.config == model.config
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_load_accepts_keys_without_prefix_and_half_precision(tmp_path, tiny):
    path = tmp_path / "plain.pt"
    torch.save({k: v.half() for k, v in tiny.state_dict().items()}, path)
    loaded = load_vqvae(path)
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values())
    torch.testing.assert_close(loaded.quantize_t.embed, tiny.quantize_t.embed.half().float())


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "vq.pt"
    path.write_bytes(b"old")

    def failing_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"x": torch.zeros(1)}, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["vq.pt"]


@pytest.fixture(scope="module")
def saved_state(tiny):
    return {"module." + k: v.clone() for k, v in tiny.state_dict().items()}


def _load_error(tmp_path, obj_or_bytes) -> str:
    path = tmp_path / "bad.pt"
    if isinstance(obj_or_bytes, bytes):
        path.write_bytes(obj_or_bytes)
    else:
        torch.save(obj_or_bytes, path)
    with pytest.raises(VQVAECheckpointError) as info:
        load_vqvae(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


class _RunsCode:
    """A pickle payload that would run a shell command (creating ``marker``) when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_load_errors_name_the_problem(tmp_path, saved_state):
    with pytest.raises(FileNotFoundError, match=r"VQ-VAE checkpoint not found: .*missing\.pt"):
        load_vqvae(tmp_path / "missing.pt")

    good = tmp_path / "good.pt"
    torch.save(saved_state, good)
    data = good.read_bytes()
    assert "truncated, corrupt" in _load_error(tmp_path, data[: len(data) // 2])
    assert "truncated, corrupt" in _load_error(tmp_path, b"this is not a checkpoint")
    # weights_only loading refuses arbitrary pickled objects instead of executing them, and says so.
    namespace = _load_error(tmp_path, {"args": argparse.Namespace(a=1)})
    assert "holds a pickled argparse.Namespace, which safe loading refuses" in namespace
    malicious = _load_error(tmp_path, {**saved_state, "payload": _RunsCode(tmp_path / "pwned")})
    assert re.search(r"holds a pickled (posix|os)\.system, which safe loading refuses", malicious)
    assert "truncated" not in malicious and not (tmp_path / "pwned").exists()
    assert "no flat dict of tensors" in _load_error(tmp_path, [torch.zeros(1)])
    gpt = {"word_embeddings.weight": torch.zeros(1)}
    assert "no enc_b./quantize_t./dec. keys" in _load_error(tmp_path, gpt)

    missing = {k: v for k, v in saved_state.items() if k != "module.dec.blocks.4.bias"}
    assert "missing key 'dec.blocks.4.bias'" in _load_error(tmp_path, missing)
    no_codebook = {k: v for k, v in saved_state.items() if k != "module.quantize_t.embed"}
    assert "missing key 'quantize_t.embed'" in _load_error(tmp_path, no_codebook)
    extra = {**saved_state, "module.dec.blocks.8.weight": torch.zeros(1)}
    assert "unexpected key 'dec.blocks.8.weight'" in _load_error(tmp_path, extra)
    wrong = {**saved_state, "module.dec.blocks.4.bias": torch.zeros(5)}
    assert "key 'dec.blocks.4.bias' has shape [5], expected [3]" in _load_error(tmp_path, wrong)


# ---------------------------------------------------------------- image reading


def _expected(rgb) -> torch.Tensor:
    """Normalised value of a uniform 8-bit colour → [3]."""
    return (torch.tensor(rgb) / 255.0 - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)


def test_read_img_pure_red_gives_the_normalised_constants(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(path)
    img = read_img(path, img_size=16)
    assert img.shape == (1, 3, 16, 16) and img.dtype == torch.float32
    expected = torch.tensor([(1 - 0.79093) / 0.30379, -0.76271 / 0.32279, -0.75340 / 0.32800])
    torch.testing.assert_close(img[0, :, 5, 7], expected)
    assert torch.all(img == img[:, :, :1, :1])


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (20, 20), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 1
    return image


@pytest.mark.parametrize(
    ("make", "suffix", "rgb", "atol"),
    [
        (lambda: Image.new("L", (20, 20), 128), ".png", (128, 128, 128), 1e-6),
        (lambda: Image.new("L", (20, 20), 128), ".jpg", (128, 128, 128), 0.02),
        (_palette_with_transparency, ".png", (0, 255, 0), 1e-6),
        (lambda: Image.new("RGBA", (20, 20), (10, 20, 30, 0)), ".png", (10, 20, 30), 1e-6),
        (lambda: Image.new("LA", (20, 20), (77, 10)), ".png", (77, 77, 77), 1e-6),
        (lambda: Image.new("CMYK", (20, 20), (0, 255, 255, 0)), ".jpg", (255, 0, 0), 0.05),
        (lambda: Image.fromarray(np.full((20, 20), 257 * 200, np.uint16)), ".png", (200, 200, 200), 1e-6),
    ],
    ids=["gray-png", "gray-jpeg", "palette-transparency", "rgba", "la", "cmyk-jpeg", "gray16-png"],
)
def test_read_img_converts_every_mode_to_rgb(tmp_path, make, suffix, rgb, atol):
    path = tmp_path / f"image{suffix}"
    source = make()
    source.save(path)
    img = read_img(path, img_size=8)
    assert img.shape == (1, 3, 8, 8)
    expected = _expected(rgb).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    torch.testing.assert_close(img, expected, atol=atol / min(IMAGE_STD), rtol=0)


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(37, 23, 16), (23, 37, 16), (50, 50, 32), (64, 31, 30), (33, 64, 32), (59, 30, 30)],  # crop at 14.5
)
def test_preprocessing_matches_torchvision(width, height, size):
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    reference = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGE_MEAN, IMAGE_STD),
        ]
    )(image)
    torch.testing.assert_close(image_to_tensor(image, size)[0], reference, atol=1e-6, rtol=0)


def test_image_to_tensor_and_file_objects_match_read_img(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    path = tmp_path / "x.png"
    image.save(path)
    from_path = read_img(path, 16)
    torch.testing.assert_close(image_to_tensor(image, 16), from_path)
    torch.testing.assert_close(read_img(io.BytesIO(path.read_bytes()), 16), from_path)


def test_unreadable_images_raise_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Image file not found: .*nope\.png"):
        read_img(tmp_path / "nope.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not an image")
    with pytest.raises(ImageReadError, match=r"Cannot read image .*garbage\.png"):
        read_img(garbage)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"truncated\.jpg") as info:
        read_img(truncated)
    assert isinstance(info.value, ValueError)


def test_normalize_denormalize_and_saving(tmp_path):
    x = torch.rand(2, 3, 5, 6)
    torch.testing.assert_close(denormalize(normalize(x)), x)
    assert to_pil(torch.full((1, 3, 2, 2), 1.7)).getpixel((0, 0)) == (255, 255, 255)
    assert to_pil(torch.full((3, 2, 2), -0.3)).getpixel((1, 1)) == (0, 0, 0)
    images = torch.rand(2, 3, 5, 6) * 1.4 - 0.2
    paths = [tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"]
    save_images(images, paths)
    for image, path in zip(images, paths, strict=True):
        saved = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
        assert torch.equal(saved, image.clamp(0, 1).mul(255).round().to(torch.uint8))
    with pytest.raises(ValueError, match="Got 1 paths for an image batch of shape"):
        save_images(images, paths[:1])
    assert math.isclose(IMAGE_MEAN[0], 0.79093) and math.isclose(IMAGE_STD[2], 0.32800)


def test_jpegs_keep_colour_edges(tmp_path):
    """A 32 px two-colour picture (the demo's kind) survives JPEG nearly intact: full colour resolution and
    the finest quantisation, where PIL's defaults blur each colour edge (the test's reference)."""
    stripes = torch.zeros(1, 3, 32, 32)
    stripes[0, 0, :, ::2] = 1.0  # one-pixel red columns on black: the hardest edges for colour subsampling
    expected = np.array(to_pil(stripes[0]), dtype=np.int16)
    path, buffer, default = tmp_path / "stripes.jpg", io.BytesIO(), tmp_path / "default.jpg"
    save_images(stripes, [path])
    save_picture(to_pil(stripes[0]), buffer, "JPEG")
    to_pil(stripes[0]).save(default)
    assert buffer.getvalue() == path.read_bytes()
    with Image.open(path) as saved:
        assert JpegImagePlugin.get_sampling(saved) == 0  # 4:4:4
        error = np.abs(np.array(saved, dtype=np.int16) - expected).max()
    with Image.open(default) as lossy:
        assert JpegImagePlugin.get_sampling(lossy) == 2  # 4:2:0
        default_error = np.abs(np.array(lossy, dtype=np.int16) - expected).max()
    assert error <= 8 < 64 <= default_error, (error, default_error)
