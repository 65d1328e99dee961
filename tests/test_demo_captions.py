"""The caption model's measurement (tools/eval_demo_captions.py) and the example inputs of the scripts.

Candidates are checked against a brute-force search of the pool, accuracies against fake scorers and
captioners with known answers, and the tool's captions and scores against what `generate_samples.py`
writes for the same queries.
"""

import importlib.util
import shlex
from pathlib import Path

import numpy as np
import pytest

import generate_samples
from demo.caption_check import caption_summary, check_captions
from demo.captions import caption, parse_caption
from demo.composite_set import Composite, CompositeSetError, load_composites, spread
from demo.dataset_builder import SplitConfig, write_split
from demo.examples import EXAMPLE_SCENES, EXAMPLES_DIR, example_name, write_examples
from demo.selection_check import (
    ATTRIBUTES,
    SelectionVerdict,
    check_selection,
    choose_candidates,
    differences,
    selection_summary,
)
from demo.silhouettes import load_silhouettes
from demo.vocabulary import ANIMALS, Scene
from tests.helpers.demo_source import write_fake_animal_mnist
from tests.helpers.tiny_cogview import tiny_cogview_argv
from tools import eval_demo_captions

REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def test_split(tmp_path_factory) -> Path:
    """A test split of 3 copies of 2 fake silhouettes per animal: 60 composites, random colours."""
    root = tmp_path_factory.mktemp("demo")
    silhouettes = load_silhouettes(write_fake_animal_mnist(root / "source", per_class=20))
    write_split(silhouettes, SplitConfig("test", copies=3), root / "test", progress=False)
    return root / "test" / "captions.tsv"


@pytest.fixture(scope="module")
def composites(test_split) -> list[Composite]:
    return load_composites(test_split)


def test_composites_come_one_per_image_with_both_captions(composites, test_split):
    assert len(composites) == 60
    for composite in composites:
        assert composite.captions == (caption(composite.scene, "zh"), caption(composite.scene, "en"))
        assert composite.path == test_split.parent / composite.name and composite.path.is_file()
    assert spread(60, 4) == [0, 15, 30, 45] and spread(60, None) == spread(60, 80) == list(range(60))


def test_candidates_are_the_match_and_the_closest_differing_in_each_attribute(composites):
    scenes = [composite.scene for composite in composites]
    kinds = set()
    for target, wanted in enumerate(scenes):
        chosen = choose_candidates(scenes, target, seed=0)
        assert chosen == choose_candidates(scenes, target, seed=0)  # deterministic
        assert chosen[0] == target and len(set(chosen)) == 4
        assert [scenes[i] == wanted for i in chosen] == [True, False, False, False]  # one match only
        for attribute, index in zip(ATTRIBUTES, chosen[1:], strict=True):
            found = differences(wanted, scenes[index])
            assert attribute in found
            # Brute force: no unchosen composite differing in this attribute shares more of the others.
            rivals = [
                len(differences(wanted, scene))
                for i, scene in enumerate(scenes)
                if attribute in differences(wanted, scene) and i not in chosen[: chosen.index(index)]
            ]
            assert len(found) == min(rivals)
            kinds.add(found)
    assert {("animal",), ("foreground",), ("background",)} <= kinds  # the pool mostly has single differences
    by_seed = [[choose_candidates(scenes, t, seed) for t in range(len(scenes))] for seed in (0, 1)]
    assert by_seed[0] != by_seed[1]


def test_candidates_need_a_composite_differing_in_every_attribute():
    scenes = [Scene(0, 1, 2), Scene(1, 1, 2), Scene(0, 3, 2)]  # nothing with another background
    with pytest.raises(CompositeSetError, match="no composite left whose background differs"):
        choose_candidates(scenes, 0, seed=0)


def scene_of(composites: list[Composite]) -> dict[str, Scene]:
    return {str(composite.path): composite.scene for composite in composites}


def test_selection_accuracy_of_a_scorer_blind_to_the_animal(composites):
    scenes = scene_of(composites)

    def colour_scorer(text: str, paths: list[str]) -> list[float]:
        wanted = parse_caption(text)
        return [-float(len(set(differences(wanted, scenes[path])) - {"animal"})) for path in paths]

    verdicts = check_selection(composites, spread(60, 10), colour_scorer, seed=3, progress=False)
    assert len(verdicts) == 20  # both captions of 10 targets
    animal_only = [v.kinds[0] == "animal only" for v in verdicts]
    assert [v.right for v in verdicts] == [not single for single in animal_only]  # a tie is a miss
    summary = selection_summary(verdicts, 10)
    accuracy = 1 - np.mean(animal_only)
    head = "post-selection: 20 captions of 10 images, 4 candidates each: matching image best"
    assert summary.startswith(f"{head} {accuracy:.3f};")
    assert "animal only 0.000 (" in summary and "foreground only 1.000 (" in summary


def test_selection_verdict_counts_ties_as_misses_and_reports_the_rival():
    verdict = SelectionVerdict(
        "a red cat on a blue background",
        ("a.png", "b.png", "c.png", "d.png"),
        ("animal only", "foreground only", "background only"),
        (-1.0, -2.0, -1.0, -0.5),
    )
    assert not verdict.right
    assert verdict.beaten() == [("animal only", True), ("foreground only", False), ("background only", False)]
    assert verdict.report_line() == (
        "post-selection\ta.png\ta red cat on a blue background\ta.png=-1.0000 b.png=-2.0000 c.png=-1.0000 "
        "d.png=-0.5000\twrong: d.png (background only) scored at least as high"
    )
    summary = selection_summary(
        [verdict, SelectionVerdict("x", verdict.names, verdict.kinds, (0, -1, -1, -1))], 2
    )
    assert summary.endswith("best 0.500; it beats the wrong image of kind animal only 1.000 (2), "
                            "foreground only 0.500 (2), background only 0.500 (2)")  # fmt: skip


def test_caption_check_counts_each_attribute(composites):
    def captioner(number: int, path: str) -> list[str]:
        scene = composites[number - 1].scene
        other = Scene((scene.animal + 1) % len(ANIMALS), scene.foreground, scene.background)
        return [caption(scene, "en"), caption(other, "zh"), "a cat"]

    targets = [0, 7]
    verdicts = check_captions([composites[i] for i in targets], [i + 1 for i in targets], captioner, False)
    assert [v.report_line().split("\t")[-1] for v in verdicts] == ["ok", "wrong animal", "unparsed"] * 2
    assert caption_summary(verdicts, 2) == (
        "image2text: 6 captions of 2 images: parse 0.667, background 0.667, foreground 0.667, animal 0.333, "
        "all right 0.333"
    )


def run_tool(capsys, argv: list[str]) -> tuple[int, str, str]:
    status = eval_demo_captions.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_tool_names_a_missing_or_foreign_captions_file_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nothing.tsv"
    status, out, err = run_tool(capsys, ["--captions", str(missing), "--model-args", "--load /nowhere"])
    assert (status, out, err) == (
        2,
        "",
        f"eval_demo_captions: error: Captions file {missing} does not exist.\n",
    )
    foreign = tmp_path / "captions.tsv"
    foreign.write_text("a.png\ta red cat on a blue background\nb.png\t一只猫\n", encoding="utf-8")
    status, _, err = run_tool(capsys, ["--captions", str(foreign)])
    assert (status, err) == (2, f"eval_demo_captions: error: {foreign}:2: '一只猫' is not a demo caption.\n")


@pytest.mark.slow
def test_the_tool_measures_what_generate_samples_writes(
    tiny_cogview, composites, test_split, tmp_path, capsys
):
    """Captions and scores of the tiny model through the tool equal generate_samples.py's for the same
    queries: the image list in file order (so line n is composite n) and the report's candidates."""
    model_args = tiny_cogview_argv(tiny_cogview)
    report = tmp_path / "report.tsv"
    argv = ["--captions", str(test_split), "--limit", "3", "--seed", "5", "--batch-size", "2"]
    status, out, _ = run_tool(
        capsys, [*argv, "--model-args", shlex.join(model_args), "--report", str(report)]
    )
    assert status == 0
    assert (
        out.startswith("image2text: 6 captions of 3 images: parse ") and "\npost-selection: 6 captions" in out
    )
    lines = [line.split("\t") for line in report.read_text(encoding="utf-8").splitlines()[1:]]
    captions = [line[3] for line in lines if line[0] == "image2text"]
    selections = [line for line in lines if line[0] == "post-selection"]
    assert [line[1] for line in selections] == [composites[i].name for i in (0, 20, 40) for _ in range(2)]

    images = tmp_path / "images.txt"
    images.write_text("".join(f"{c.path}\n" for c in composites), encoding="utf-8")
    queries = tmp_path / "select.txt"
    folder = test_split.parent
    queries.write_text(
        "".join(
            "\t".join([line[2], *(str(folder / pair.split("=")[0]) for pair in line[3].split())]) + "\n"
            for line in selections
        ),
        encoding="utf-8",
    )
    common = [*eval_demo_captions.SAMPLING_DEFAULTS, *model_args, "--seed", "5"]
    for task, source, batch in (("image2text", images, "2"), ("post-selection", queries, "1")):
        out_dir = tmp_path / task
        run = [*common, "--batch-size", batch, "--generation-task", task, "--input-source", str(source)]
        assert generate_samples.main([*run, "--output-path", str(out_dir)]) == 0
    written = (tmp_path / "image2text" / "captions.txt").read_text(encoding="utf-8").splitlines()
    assert captions == [text for i in (0, 20, 40) for text in written[i].split("\t")]
    scores = (tmp_path / "post-selection" / "scores.txt").read_text(encoding="utf-8").splitlines()
    assert [" ".join(p.split("=")[1] for p in line[3].split()) for line in selections] == [
        line.replace("\t", " ") for line in scores
    ]


@pytest.mark.skipif(importlib.util.find_spec("animal_mnist") is None, reason="animal-mnist not installed")
def test_the_example_images_are_what_the_generator_writes(tmp_path):
    written = write_examples(load_silhouettes(), tmp_path)
    assert sorted(path.name for path in EXAMPLES_DIR.iterdir()) == sorted(path.name for path in written)
    for path in written:
        assert path.read_bytes() == (EXAMPLES_DIR / path.name).read_bytes(), path.name


def test_the_example_inputs_name_the_example_images():
    scenes = {f"demo/examples/{example_name(scene)}": scene for scene in EXAMPLE_SCENES}
    lines = (REPO_ROOT / "input_select.txt").read_text(encoding="utf-8").splitlines()
    languages = set()
    for line in lines:
        text, *images = line.split("\t")
        wanted = parse_caption(text)
        assert wanted is not None and len(images) >= 2 and set(images) <= set(scenes)
        assert [scenes[image] for image in images].count(wanted) == 1  # one matching image per line
        languages.add(text.isascii())
    assert languages == {True, False}  # both languages
    listed = (REPO_ROOT / "input_image2text.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(listed) == sorted(scenes)
    assert all((REPO_ROOT / path).is_file() for path in scenes)
