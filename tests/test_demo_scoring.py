"""The demo's tokenizer and scorer: text pieces, reading scenes from pixels, the classifier, eval_demo."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import vqvae
from data_utils import UnifiedTokenizer
from demo.captions import caption
from demo.classifier import (
    ClassifierFileError,
    ClassifierTraining,
    labelled_masks,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from demo.composition import compose
from demo.dataset_builder import SplitConfig, write_split
from demo.evaluation import nearest_palette, read_image, resize_mask
from demo.image_sets import read_pixels
from demo.round_trip import RoundTrip
from demo.scoring import score_images, summarize, summary_text
from demo.silhouettes import load_silhouettes
from demo.text_tokenizer import train_text_tokenizer
from demo.vocabulary import LANGUAGES, PALETTE, Scene, all_scenes
from preprocess.sources import read_captions
from tests.helpers.demo_source import write_fake_animal_mnist
from tools import eval_demo

# The models here are tiny: one thread is fastest and immune to other processes on the 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Train (2 copies of 18 fake silhouettes per animal) and test (2 per animal) splits on disk."""
    root = tmp_path_factory.mktemp("demo")
    silhouettes = load_silhouettes(write_fake_animal_mnist(root / "source", per_class=20))
    write_split(silhouettes, SplitConfig("train", copies=2), root / "train", progress=False)
    write_split(silhouettes, SplitConfig("test"), root / "test", progress=False)
    return root


@pytest.fixture(scope="module")
def classifier_path(splits):
    records = read_captions(splits / "train" / "captions.tsv")
    masks, labels = labelled_masks(records, read_pixels(records, splits / "train", progress=False))
    model = train_classifier(
        masks, labels, ClassifierTraining(epochs=6, batch_size=32, lr=3e-3), progress=False
    )
    path = splits / "classifier.pt"
    save_classifier(model, path)
    return path


def test_text_tokenizer_makes_each_word_one_piece(tmp_path):
    captions = [caption(scene, language) for scene in all_scenes() for language in LANGUAGES]
    sp = train_text_tokenizer(captions * 2, tmp_path / "a.model")
    train_text_tokenizer(reversed(captions), tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert sp.GetPieceSize() == 45
    for text in captions:
        pieces = sp.EncodeAsPieces(text)
        assert len(pieces) == (6 if text.isascii() is False else 7)
        assert sp.DecodePieces(pieces) == text and sp.unk_id() not in sp.EncodeAsIds(text)
    assert sp.EncodeAsPieces("a red cat on a blue background") == [
        "▁a", "▁red", "▁cat", "▁on", "▁a", "▁blue", "▁background"
    ]  # fmt: skip
    assert sp.EncodeAsPieces("蓝色背景上的一只红色的长颈鹿") == [
        "▁",
        "蓝色",
        "背景上的一只",
        "红色",
        "的",
        "长颈鹿",
    ]
    assert sp.unk_id() in sp.EncodeAsIds("a pink cat")
    tokenizer = UnifiedTokenizer(None, "cpu", 512, txt_tokenizer_path=tmp_path / "a.model")
    assert len(tokenizer) == 512 + 45 + 27
    ids = tokenizer("a red cat on a blue background")
    assert [i - 512 for i in ids] == sp.EncodeAsIds("a red cat on a blue background")
    assert tokenizer.DecodeIds(ids)[0] == ["a red cat on a blue background"]


def test_read_image_finds_exact_colours_at_any_size_and_through_jpeg(splits):
    silhouettes = load_silhouettes(splits / "source")
    scene = Scene(animal=4, foreground=6, background=3)  # white on yellow: the closest pair
    pixels = compose(silhouettes.images[40], scene, dx=2, dy=-3)
    clean = read_image(pixels)
    assert (clean.background, clean.foreground) == (3, 6)
    expected = resize_mask((pixels == PALETTE[6].rgb).all(-1)) >= 0.5  # reduced to 32², then binary
    assert np.array_equal(clean.mask, expected.astype(np.float32))
    small = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=70)
    for variant in (small, np.asarray(Image.open(buffer))):
        reading = read_image(variant)
        assert (reading.background, reading.foreground) == (3, 6)
        assert np.abs(reading.mask - clean.mask).mean() < 0.05
    # A decoder's blur turns the edge of red on blue into purplish blends: still red, not purple.
    red_on_blue = Image.fromarray(compose(silhouettes.images[20], Scene(1, 0, 2), dx=0, dy=0))
    blurred = red_on_blue.resize((32, 32), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(1.5))
    votes = np.bincount(nearest_palette(np.asarray(blurred, dtype=np.float32)).reshape(-1), minlength=8)
    assert votes[4] > votes[0]  # more pixels are nearest to purple than to red: a plain vote would fail
    assert (read_image(blurred).background, read_image(blurred).foreground) == (2, 0)
    blank = read_image(np.full((64, 64, 3), PALETTE[1].rgb, dtype=np.uint8))
    assert (blank.background, blank.foreground, blank.mask.max()) == (1, None, 0.0)
    with pytest.raises(ValueError, match="square RGB image"):
        read_image(np.zeros((64, 32, 3), dtype=np.uint8))


def test_classifier_learns_the_silhouettes_and_saves_exactly(splits, classifier_path, tmp_path):
    model = load_classifier(classifier_path)
    records = read_captions(splits / "test" / "captions.tsv")
    masks, labels = labelled_masks(records, read_pixels(records, splits / "test", progress=False))
    assert len(labels) == 20
    assert (predict(model, masks) == labels).mean() >= 0.9
    resaved = tmp_path / "again.pt"
    save_classifier(model, resaved)
    with torch.no_grad():
        inputs = torch.from_numpy(masks).unsqueeze(1)
        assert torch.equal(model(inputs), load_classifier(resaved)(inputs))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ClassifierFileError, match="not a demo animal classifier"):
        load_classifier(tmp_path / "other.pt")
    (tmp_path / "cut.pt").write_bytes(classifier_path.read_bytes()[:100])
    with pytest.raises(ClassifierFileError, match="truncated"):
        load_classifier(tmp_path / "cut.pt")


def test_scores_say_which_part_is_wrong(splits, classifier_path):
    model = load_classifier(classifier_path)
    silhouettes = load_silhouettes(splits / "source")
    image = compose(silhouettes.images[9], Scene(0, 0, 2), 0, 0)  # a red "bear" (class 0) on blue
    prompts = [
        "a red bear on a blue background",
        "蓝色背景上的一只红色的熊",
        "a blue bear on a red background",  # colours swapped: both wrong
        "a red bear on a green background",  # background wrong
        "a pink bear on a blue background",  # outside the templates: not scored
    ]
    results = score_images([image] * 5, [f"{i}" for i in range(5)], prompts, model)
    assert [r.correct("background") for r in results[:4]] == [True, True, False, False]
    assert [r.correct("foreground") for r in results[:4]] == [True, True, False, True]
    assert results[0].animal == 0 and results[0].all_correct and not results[3].all_correct
    assert results[4].expected is None and results[4].report_line().endswith("unparsed prompt")
    summary = summarize(results)
    assert (summary.scored, summary.unparsed) == (4, 1)
    assert summary.accuracy == {"background": 0.5, "foreground": 0.75, "animal": 1.0, "all": 0.5}
    assert summary_text(summary) == (
        "4 images: background 0.500, foreground 0.750, animal 1.000, all three 0.500 "
        "(1 prompts outside the demo templates were not scored)"
    )


def test_round_trip_statistics_match_a_direct_computation(splits, tiny_vqvae):
    records = read_captions(splits / "test" / "captions.tsv")[:6]
    trip = RoundTrip(tiny_vqvae, image_size=64)
    decoded = read_pixels(records, splits / "test", transform=trip, batch_size=2, progress=False)
    assert len(decoded) == 3 and all(d.shape == (64, 64, 3) for d in decoded.values())
    inputs = torch.cat([vqvae.read_img(splits / "test" / name, 64) for name in decoded])
    codes = vqvae.img2code(tiny_vqvae, inputs)
    expected = vqvae.code2img(tiny_vqvae, codes).clamp(0, 1)
    target = vqvae.denormalize(inputs).clamp(0, 1)
    mse = float(((expected - target) ** 2).mean())
    assert trip.psnr == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    assert trip.codebook_usage == len(codes.unique()) / tiny_vqvae.n_embed
    first = np.asarray(vqvae.to_pil(expected[0]))
    assert np.array_equal(next(iter(decoded.values())), first)


def test_eval_demo_scores_a_captions_file_and_generation_folders(splits, classifier_path, tmp_path, capsys):
    args = ["--captions", str(splits / "test" / "captions.tsv"), "--classifier", str(classifier_path)]
    assert eval_demo.main([*args, "--report", str(tmp_path / "report.tsv")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("40 images: background 1.000, foreground 1.000, animal ")
    report = (tmp_path / "report.tsv").read_text(encoding="utf-8").splitlines()
    assert len(report) == 41 and report[1].startswith("images/00000.png\t")
    # The layout of `generate_samples.py --with-id`: samples/id/0.jpg ..., plus the grid concat.jpg.
    silhouettes = load_silhouettes(splits / "source")
    samples = tmp_path / "samples"
    for index, scene in enumerate([Scene(1, 2, 3), Scene(5, 7, 6)]):
        (samples / f"q{index}").mkdir(parents=True)
        for copy in range(2):
            Image.fromarray(compose(silhouettes.images[20 * scene.animal + copy], scene, 0, 0)).save(
                samples / f"q{index}" / f"{copy}.jpg", quality=90
            )
        Image.new("RGB", (8, 8)).save(samples / f"q{index}" / "concat.jpg")
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text(
        f"q0\t{caption(Scene(1, 2, 3), 'en')}\nq1\t{caption(Scene(5, 7, 6), 'zh')}\n", encoding="utf-8"
    )
    argv = ["--prompts", str(prompts), "--samples", str(samples), "--classifier", str(classifier_path)]
    assert eval_demo.main(argv) == 0
    assert capsys.readouterr().out.startswith("4 images: background 1.000, foreground 1.000")


def test_eval_demo_errors_are_one_line(splits, classifier_path, tmp_path, capsys):
    missing = ["--captions", str(splits / "test" / "captions.tsv"), "--classifier", str(tmp_path / "no.pt")]
    assert eval_demo.main(missing) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"eval_demo: error: Animal classifier {tmp_path / 'no.pt'} does not exist."
    )
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("q9\ta red cat on a blue background\n", encoding="utf-8")
    argv = ["--prompts", str(prompts), "--samples", str(tmp_path), "--classifier", str(classifier_path)]
    assert eval_demo.main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"eval_demo: error: {prompts}:1: no sample folder {tmp_path / 'q9'}."
    )
