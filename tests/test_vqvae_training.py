"""Training the image tokenizer: a tiny model on generated shapes learns, resumes exactly, skips bad files."""

import os
import random
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from common.output_folders import OutputFolderError
from tools import train_vqvae
from vqvae import code2img, denormalize, img2code, load_vqvae, read_img, training
from vqvae.image_files import ImageFiles, NoImagesError
from vqvae.training import StepBatchSampler, TrainConfig, TrainingSetupError, train, train_state_path

REPO = Path(__file__).resolve().parents[1]
PALETTE = [(230, 30, 30), (30, 160, 40), (40, 60, 220), (240, 220, 40), (250, 250, 250), (20, 20, 20)]


def draw_shapes(folder: Path, count: int, size: int = 32, seed: int = 0) -> None:
    """`count` PNGs of two random ellipses/rectangles on a background, from a 6-colour palette."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (size, size), rng.choice(PALETTE))
        draw = ImageDraw.Draw(image)
        for _ in range(2):
            x0, y0 = rng.randrange(size - 8), rng.randrange(size - 8)
            box = (x0, y0, x0 + rng.randrange(6, size // 2), y0 + rng.randrange(6, size // 2))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=rng.choice(PALETTE))
        image.save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shapes") / "images"
    draw_shapes(folder / "a", 40, seed=0)
    draw_shapes(folder / "b" / "nested", 24, seed=1)  # the folder is searched recursively
    return folder


# The models here are tiny: one thread is fastest and immune to other processes on the 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def tiny_config(images: Path, output: Path, **overrides) -> TrainConfig:
    """×4 down-sampling of 32 px images → 8×8 codes from a codebook of 32."""
    options = {
        "image_size": 32,
        "channel": 32,
        "embed_dim": 16,
        "n_embed": 32,
        "stride": 4,
        "batch_size": 16,
        "lr": 3e-3,
        "dead_code_threshold": 1.0,
        "save_interval": 10**6,
        "window": 20,
        "progress": False,
    }
    return TrainConfig(images=images, output=output, **(options | overrides))


def test_training_improves_psnr_and_uses_most_of_the_codebook(shapes, tmp_path):
    output = tmp_path / "tiny.pt"
    result = train(tiny_config(shapes, output, steps=200))
    assert (result.start_step, result.step, len(result.psnr)) == (0, 200, 200)
    first, last = sum(result.psnr[:5]) / 5, sum(result.psnr[-20:]) / 20
    assert last - first > 5.0, (first, last)
    assert result.usage[-1] > 0.5
    assert result.restarted >= 32  # the first step re-initialises the whole codebook from data

    # The saved model is the trained one: it reconstructs the images about as well as training reported.
    model = load_vqvae(output)
    assert (model.downsample_factor, model.n_embed) == (4, 32)
    images = torch.cat([read_img(p, 32) for p in sorted(shapes.rglob("*.png"))[:16]])
    codes = img2code(model, images)
    assert codes.shape == (16, 64)
    recon = code2img(model, codes).clamp(0, 1)
    psnr = 10 * torch.log10(1 / (recon - denormalize(images).clamp(0, 1)).pow(2).mean()).item()
    assert psnr > first + 5.0
    assert train_state_path(output).is_file()


def test_resume_continues_from_the_saved_step_exactly(shapes, tmp_path):
    straight = tmp_path / "straight.pt"
    train(tiny_config(shapes, straight, steps=12))

    resumed = tmp_path / "resumed.pt"
    first = train(tiny_config(shapes, resumed, steps=6))
    assert torch.load(train_state_path(resumed), weights_only=True)["step"] == 6
    second = train(tiny_config(shapes, resumed, steps=12, resume=True))
    assert (second.start_step, second.step, len(second.psnr)) == (6, 12, 6)
    assert torch.load(train_state_path(resumed), weights_only=True)["step"] == 12
    assert len(first.psnr) == 6

    expected, actual = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_periodic_saves_and_a_zip_source(shapes, tmp_path, monkeypatch):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(shapes.rglob("*.png")):
            zf.write(path, path.relative_to(shapes).as_posix())
        zf.writestr("notes.txt", "not an image")
    from_zip, from_folder = ImageFiles(archive, 32), ImageFiles(shapes, 32)
    assert len(from_zip) == len(from_folder) == 64
    assert torch.equal(from_zip[5][0], from_folder[5][0])

    saved_steps = []
    real_save = training._save

    def recording_save(model, optimizer, step, config):
        saved_steps.append(step)
        real_save(model, optimizer, step, config)

    monkeypatch.setattr(training, "_save", recording_save)
    output = tmp_path / "zip.pt"
    result = train(tiny_config(archive, output, steps=7, save_interval=3, batch_size=8, workers=1))
    assert result.step == 7
    assert saved_steps == [3, 6, 7]
    assert torch.load(train_state_path(output), weights_only=True)["step"] == 7


def test_unreadable_images_are_skipped_and_counted(shapes, tmp_path):
    folder = tmp_path / "mixed"
    draw_shapes(folder, 6)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="Skipped 2 unreadable image"):
        result = train(tiny_config(folder, tmp_path / "m.pt", steps=2, batch_size=8))
    assert sorted(Path(name).name for name in result.unreadable) == ["broken.png", "empty.jpg"]
    assert len(result.psnr) == 2

    hopeless = tmp_path / "hopeless"
    hopeless.mkdir()
    (hopeless / "a.png").write_bytes(b"junk")
    with pytest.raises(TrainingSetupError, match="None of the 1 images"):
        train(tiny_config(hopeless, tmp_path / "h.pt", steps=2))


def test_setup_errors(shapes, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(NoImagesError, match=r"No image files \(.jpg.*\) found in .*empty"):
        train(tiny_config(empty, tmp_path / "a.pt", steps=1))
    with pytest.raises(FileNotFoundError, match="Image folder or zip not found"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "a.pt", steps=1))
    with pytest.raises(TrainingSetupError, match=r"Cannot resume: .*b\.pt\.train-state not found"):
        train(tiny_config(shapes, tmp_path / "b.pt", steps=1, resume=True))
    existing = tmp_path / "c.pt"
    existing.write_bytes(b"x")
    with pytest.raises(TrainingSetupError, match="already exists: pass --resume"):
        train(tiny_config(shapes, existing, steps=1))
    with pytest.raises(TrainingSetupError, match=r"--image-size 30 is not a multiple of the .* factor 4"):
        train(tiny_config(shapes, tmp_path / "d.pt", steps=1, image_size=30))


def test_options_and_output_are_checked_before_training(shapes, tmp_path):
    with pytest.raises(TrainingSetupError, match=r"--steps must be at least 1, got 0"):
        train(tiny_config(shapes, tmp_path / "zero.pt", steps=0))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(
        OutputFolderError,
        match=r"the folder of --output .*a_file/model\.pt is not a folder: .*a_file is a file$",
    ):
        train(tiny_config(shapes, tmp_path / "a_file" / "model.pt", steps=1))
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(TrainingSetupError, match=r"--output .*folder\.pt is a folder"):
        train(tiny_config(shapes, tmp_path / "folder.pt", steps=1))

    saved = tmp_path / "run.pt"
    train(tiny_config(shapes, saved, steps=2))
    with pytest.raises(
        TrainingSetupError,
        match=r"Cannot resume with --channel 64: the run saved in .*run\.pt\.train-state has --channel 32 "
        r"\(leave --channel out to keep it",
    ):
        train(tiny_config(shapes, saved, steps=4, resume=True, channel=64))
    with pytest.raises(TrainingSetupError, match=r"already at step 2; pass a --steps above it"):
        train(tiny_config(shapes, saved, steps=2, resume=True))
    shape_left_out = {"channel": None, "embed_dim": None, "n_embed": None, "stride": None}
    assert train(tiny_config(shapes, saved, steps=3, resume=True, **shape_left_out)).step == 3


def test_ctrl_c_saves_the_finished_step_and_resumes_exactly(shapes, tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight.pt"
    train(tiny_config(shapes, straight, steps=5))

    real_step = training.train_step

    def interrupted_at_step_3(model, optimizer, images, config, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a step
        return real_step(model, optimizer, images, config, step)

    monkeypatch.setattr(training, "train_step", interrupted_at_step_3)
    output = tmp_path / "cli.pt"
    args = ["--images", str(shapes), "--output", str(output), "--image-size", "32", "--channel", "32"]
    args += ["--embed-dim", "16", "--n-embed", "32", "--stride", "4", "--steps", "5", "--workers", "0"]
    args += ["--batch-size", "16", "--lr", "3e-3", "--dead-code-threshold", "1.0"]
    with pytest.raises(SystemExit) as exit_info:
        train_vqvae.main(args)
    assert exit_info.value.code == 130
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train_vqvae:")]
    assert err_lines == [
        f"train_vqvae: interrupted at step 3; saved {output} (continue with the same command and --resume)"
    ]
    assert torch.load(train_state_path(output), weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back

    monkeypatch.setattr(training, "train_step", real_step)
    train(tiny_config(shapes, output, steps=5, resume=True))
    expected, actual = torch.load(straight, weights_only=True), torch.load(output, weights_only=True)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_step_batch_sampler_is_a_function_of_the_step():
    full = list(StepBatchSampler(10, 3, seed=7, start=0, end=9))
    assert all(len(batch) == 3 for batch in full)
    for epoch in range(3):  # 3 batches per epoch, each epoch draws distinct items
        items = {i for batch in full[3 * epoch : 3 * epoch + 3] for i in batch}
        assert len(items) == 9
    assert full[:3] != full[3:6]
    assert list(StepBatchSampler(10, 3, seed=7, start=4, end=9)) == full[4:]
    assert list(StepBatchSampler(10, 3, seed=8, start=0, end=9)) != full


def test_cli_main_trains_and_reports_errors(shapes, tmp_path, capsys):
    output = tmp_path / "cli.pt"
    args = ["--images", str(shapes), "--output", str(output), "--image-size", "32", "--channel", "8"]
    args += ["--embed-dim", "4", "--n-embed", "16", "--stride", "4", "--steps", "2", "--workers", "0"]
    train_vqvae.main(args)
    assert "at step 2" in capsys.readouterr().out
    assert load_vqvae(output).config["n_embed"] == 16
    with pytest.raises(SystemExit, match=r"train_vqvae: error: .*already exists"):
        train_vqvae.main(args)


@pytest.mark.slow
def test_train_vqvae_script_end_to_end(shapes, tmp_path):
    output = tmp_path / "script.pt"
    command = [sys.executable, str(REPO / "tools" / "train_vqvae.py"), "--images", str(shapes)]
    command += ["--output", str(output), "--image-size", "32", "--channel", "8", "--embed-dim", "4"]
    command += ["--n-embed", "16", "--stride", "4", "--steps", "3", "--workers", "0"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "psnr=" in done.stderr and "usage=" in done.stderr  # the progress bar's postfix
    assert load_vqvae(output).downsample_factor == 4
    command += ["--steps", "5", "--resume"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "at step 5" in done.stdout
