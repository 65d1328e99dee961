"""The demo data set: vocabulary and captions both ways, the split, composition, the split builder."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from demo.captions import caption, parse_caption, template_literals
from demo.composition import FRAME_WIDTH, MASK_SIDE, compose, silhouette_mask
from demo.dataset_builder import SplitConfig, SplitExistsError, image_name, plan_split, write_split
from demo.silhouettes import SilhouetteSourceError, load_silhouettes, split_indices
from demo.vocabulary import ANIMALS, LANGUAGES, PALETTE, Scene, all_scenes, colour_pairs
from preprocess.sources import read_captions
from tests.helpers.demo_source import write_fake_animal_mnist
from tools import build_demo_data


@pytest.fixture(scope="module")
def fake_source(tmp_path_factory):
    return write_fake_animal_mnist(tmp_path_factory.mktemp("animal_mnist"), per_class=20)


@pytest.fixture(scope="module")
def silhouettes(fake_source):
    return load_silhouettes(fake_source)


def test_captions_follow_the_templates_and_parse_back():
    scene = Scene(animal=2, foreground=0, background=2)  # a red cat on blue
    assert caption(scene, "zh") == "蓝色背景上的一只红色的猫"
    assert caption(scene, "en") == "a red cat on a blue background"
    scenes = all_scenes()
    assert len(scenes) == 560 and len(set(scenes)) == 560 and len(colour_pairs()) == 56
    for scene in scenes:
        for language in LANGUAGES:
            assert parse_caption(caption(scene, language)) == scene
    assert template_literals("zh") == ["背景上的一只", "的"]


@pytest.mark.parametrize(
    "text",
    [
        "a pink cat on a blue background",  # colour outside the palette
        "a red cat on a red background",  # the same colour twice
        "a red cat",
        "蓝色背景上的一只红色的猫咪",
        "紫色背景上的一只紫色的马",
        "",
    ],
)
def test_parse_caption_rejects_anything_else(text):
    assert parse_caption(text) is None


def test_parse_caption_tolerates_case_and_spacing():
    assert parse_caption("  A Red  Cat on a blue background ") == Scene(2, 0, 2)
    assert parse_caption("长颈鹿") is None
    assert parse_caption("白色背景上的一只黑色的长颈鹿") == Scene(6, 7, 6)


def test_scene_rejects_equal_colours_and_bad_indices():
    with pytest.raises(ValueError, match="both red"):
        Scene(0, 0, 0)
    with pytest.raises(ValueError, match="animal label 10"):
        Scene(10, 0, 1)


def test_split_is_index_mod_10_and_per_animal_caps_it(silhouettes):
    test = split_indices(silhouettes, "test")
    train = split_indices(silhouettes, "train")
    assert list(test) == list(range(9, 200, 10))
    assert len(train) == 180 and not set(train) & set(test)
    capped = split_indices(silhouettes, "train", per_animal=3)
    assert np.bincount(silhouettes.labels[capped]).tolist() == [3] * 10
    assert list(capped[:3]) == [0, 1, 2]  # the first ones of each animal


def test_compose_paints_two_exact_colours_with_a_pure_frame(silhouettes):
    scene = Scene(animal=3, foreground=5, background=6)
    pixels = compose(silhouettes.images[0], scene, dx=-4, dy=3)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    colours = {tuple(c) for c in pixels.reshape(-1, 3).tolist()}
    assert colours == {PALETTE[5].rgb, PALETTE[6].rgb}
    frame = np.ones((64, 64), dtype=bool)
    frame[FRAME_WIDTH:-FRAME_WIDTH, FRAME_WIDTH:-FRAME_WIDTH] = False
    assert (pixels[frame] == PALETTE[6].rgb).all()
    # The foreground is exactly the thresholded mask at top-left (8 + dx, 8 + dy).
    expected = np.zeros((64, 64), dtype=bool)
    expected[11 : 11 + MASK_SIDE, 4 : 4 + MASK_SIDE] = silhouette_mask(silhouettes.images[0])
    assert ((pixels == PALETTE[5].rgb).all(-1) == expected).all()
    with pytest.raises(ValueError, match="outside"):
        compose(silhouettes.images[0], scene, dx=5, dy=0)


def test_plan_is_deterministic_and_copies_extend_it(silhouettes):
    one = plan_split(silhouettes, SplitConfig("train", copies=1))
    two = plan_split(silhouettes, SplitConfig("train", copies=2))
    assert plan_split(silhouettes, SplitConfig("train", copies=1)) == one
    assert two[: len(one)] == one and len(two) == 2 * len(one)
    assert [c.sample for c in two[len(one) :]] == [c.sample for c in one]
    assert plan_split(silhouettes, SplitConfig("train", copies=1, seed=1)) != one
    assert (
        plan_split(silhouettes, SplitConfig("test"))
        != one[: len(plan_split(silhouettes, SplitConfig("test")))]
    )
    for item in two:
        assert item.scene.animal == silhouettes.labels[item.sample]
        assert -4 <= item.dx <= 4 and -4 <= item.dy <= 4


def test_written_split_is_the_preprocessing_input_and_reproducible(silhouettes, tmp_path):
    config = SplitConfig("test", copies=2)
    assert write_split(silhouettes, config, tmp_path / "a", progress=False)
    assert write_split(silhouettes, config, tmp_path / "b", progress=False)
    records = read_captions(tmp_path / "a" / "captions.tsv")
    plan = plan_split(silhouettes, config)
    assert len(records) == 2 * len(plan) == 80
    for index, item in enumerate(plan):
        zh, en = records[2 * index : 2 * index + 2]
        assert zh.image == en.image == image_name(index)
        assert (zh.caption, en.caption) == (caption(item.scene, "zh"), caption(item.scene, "en"))
        with Image.open(tmp_path / "a" / zh.image) as image:
            assert np.array_equal(
                np.asarray(image), compose(silhouettes.images[item.sample], item.scene, item.dx, item.dy)
            )
    for name in ["captions.tsv", image_name(0), image_name(39)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.loads((tmp_path / "a" / "split.json").read_text())["images"] == 40
    assert not (tmp_path / "a.partial").exists()


def test_rewriting_a_split_is_a_no_op_or_refused(silhouettes, tmp_path):
    folder = tmp_path / "test"
    assert write_split(silhouettes, SplitConfig("test"), folder, progress=False)
    assert not write_split(silhouettes, SplitConfig("test"), folder, progress=False)
    with pytest.raises(SplitExistsError, match="not drawn with these options"):
        write_split(silhouettes, SplitConfig("test", copies=2), folder, progress=False)


def test_an_interrupted_build_is_redone(silhouettes, tmp_path):
    stale = tmp_path / "train.partial" / "images"
    stale.mkdir(parents=True)
    (stale / "junk.png").write_bytes(b"half")
    write_split(silhouettes, SplitConfig("train", per_animal=1), tmp_path / "train", progress=False)
    assert sorted(p.name for p in (tmp_path / "train" / "images").iterdir()) == [
        f"{i:05d}.png" for i in range(10)
    ]


def test_bad_source_is_one_line(tmp_path, capsys):
    (tmp_path / "animal_data_version_3.gz").write_bytes(b"not gzip")
    (tmp_path / "animal_label_version_3.gz").write_bytes(b"not gzip")
    assert build_demo_data.main(["--output", str(tmp_path / "out"), "--source", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("build_demo_data: error: ")
        and "animal_data_version_3.gz is not a gzipped pickle" in err
    )
    assert "\n" not in err
    with pytest.raises(SilhouetteSourceError, match="does not exist"):
        load_silhouettes(tmp_path / "missing")


def test_build_tool_writes_both_splits(fake_source, tmp_path, capsys):
    args = [
        "--output",
        str(tmp_path),
        "--source",
        str(fake_source),
        "--per-animal",
        "1",
        "--train-copies",
        "2",
    ]
    assert build_demo_data.main(args) == 0
    assert len(read_captions(tmp_path / "train" / "captions.tsv")) == 2 * 2 * 10
    assert len(read_captions(tmp_path / "test" / "captions.tsv")) == 2 * 10
    assert build_demo_data.main(args) == 0
    assert "already built with these options" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("animal_mnist") is None, reason="animal-mnist not installed")
def test_the_real_animal_mnist_matches_the_data_spec():
    real = load_silhouettes()
    assert real.images.shape == (10000, 28, 28) and len(ANIMALS) == 10
    assert np.bincount(real.labels).tolist() == [1000] * 10
    assert np.bincount(real.labels[split_indices(real, "test")]).tolist() == [100] * 10
