"""Which model a launcher uses: given, released, bundled (pretrained/demo/models.args), else the hint.

Each case builds its own ``pretrained`` folder in a temporary directory (the ``PRETRAINED_DIR`` of the
launchers); nothing is read from the repository's own ``pretrained/``.
"""

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from common.model_sources import ManifestError, choose_model, read_manifest
from tests.test_generate_samples import run_script


def checkpoint(folder: Path) -> Path:
    """A folder that looks like a checkpoint (its tracker), enough for choosing; nothing loads it here."""
    folder.mkdir(parents=True)
    (folder / "latest_checkpointed_iteration.txt").write_text("1\n")
    return folder


def released(pretrained: Path, *folders: str) -> None:
    for name in folders:
        checkpoint(pretrained / "cogview" / name)
    (pretrained / "vqvae").mkdir(parents=True)
    (pretrained / "vqvae" / "vqvae_hard_biggerset_011.pt").write_bytes(b"")


def bundled(pretrained: Path, text: str, folders: tuple[str, ...] = ("t2i", "caption")) -> Path:
    demo = pretrained / "demo"
    for name in folders:
        checkpoint(demo / name)
    (demo / "vqvae.pt").write_bytes(b"")
    (demo / "models.args").write_text(text, encoding="utf-8")
    return demo


MANIFEST = """\
# the bundled demo models
common: --num-layers 2 --hidden-size=32 --img-tokenizer-path vqvae.pt
text2image: --load t2i --post-select-load caption  # one model per layout
caption: --load=caption
"""


def test_released_weights_come_first(tmp_path):
    released(tmp_path, "cogview-base", "cogview-caption")
    bundled(tmp_path, MANIFEST)
    choice = choose_model("text2image", [], tmp_path)
    vqvae = str(tmp_path / "vqvae" / "vqvae_hard_biggerset_011.pt")
    assert choice.arguments == [
        *("--load", str(tmp_path / "cogview" / "cogview-base"), "--img-tokenizer-path", vqvae),
        *("--post-select-load", str(tmp_path / "cogview" / "cogview-caption")),  # the original's two models
    ]
    assert choice.notice == f"using the released CogView weights in {tmp_path / 'cogview' / 'cogview-base'}"
    assert choice.source == "released"
    web = choose_model("web", [], tmp_path)
    assert web.arguments[4:] == ["--load-caption", str(tmp_path / "cogview" / "cogview-caption")]  # no SR


def test_bundled_models_are_read_from_the_manifest_with_paths_beside_it(tmp_path):
    released(tmp_path, "cogview-caption")  # no cogview-base: text2image uses the bundled model
    demo = bundled(tmp_path, MANIFEST)
    common = ["--num-layers", "2", "--hidden-size=32", "--img-tokenizer-path", str(demo / "vqvae.pt")]
    choice = choose_model("text2image", ["--batch-size", "8"], tmp_path)
    assert choice.source == "bundled"
    assert choice.arguments == [
        *common,
        "--load",
        str(demo / "t2i"),
        "--post-select-load",
        str(demo / "caption"),
    ]
    assert choice.notice == (
        f"the released weights are not in {tmp_path / 'cogview'}; using the bundled demo models "
        f"({demo / 'models.args'})"
    )
    assert choose_model("caption", [], tmp_path).arguments[0:2] == [
        "--load",
        str(tmp_path / "cogview" / "cogview-caption"),
    ]
    web = choose_model("web", [], tmp_path)
    assert web.arguments == [*choice.arguments, "--load-caption", str(demo / "caption")]


SCORERS = """\
common: --img-tokenizer-path vqvae.pt
text2image: --load t2i --post-select-load t2i caption --top_k 30
caption: --load caption
"""


def test_every_folder_of_a_multi_folder_flag_is_read_beside_the_manifest_and_must_exist(tmp_path):
    demo = bundled(tmp_path, SCORERS)
    assert choose_model("text2image", [], tmp_path).arguments == [
        *("--img-tokenizer-path", str(demo / "vqvae.pt"), "--load", str(demo / "t2i")),
        *("--post-select-load", str(demo / "t2i"), str(demo / "caption"), "--top_k", "30"),
    ]
    shutil.rmtree(demo / "caption")  # the second scorer is gone: the bundle is incomplete
    assert choose_model("text2image", [], tmp_path).source == "missing"


def test_a_caption_model_with_other_vocabulary_padding_gets_it_as_its_own_web_argument(tmp_path):
    demo = bundled(tmp_path, SCORERS + "caption: --make-vocab-size-divisible-by 64\n")
    web = choose_model("web", [], tmp_path).arguments
    assert web[-3:] == [
        "--load-caption",
        str(demo / "caption"),
        "--caption-model-args=--make-vocab-size-divisible-by 64",
    ]  # the padding decides the embedding's rows, so the main model's would not load it


def test_given_models_win_and_nothing_is_said(tmp_path):
    bundled(tmp_path, MANIFEST)
    vqvae = str(tmp_path / "vqvae" / "vqvae_hard_biggerset_011.pt")
    assert choose_model("text2image", ["--load=mine"], tmp_path).arguments == ["--img-tokenizer-path", vqvae]
    given = choose_model("caption", [], tmp_path, checkpoint="ckpt", vqvae="v.pt")
    assert (given.source, given.arguments, given.notice) == (
        "given",
        ["--load", "ckpt", "--img-tokenizer-path", "v.pt"],
        None,
    )


def test_without_any_model_the_released_paths_are_passed_on(tmp_path):
    bundled(tmp_path, MANIFEST, folders=("caption",))  # the manifest's t2i folder is missing
    choice = choose_model("text2image", [], tmp_path)
    vqvae = str(tmp_path / "vqvae" / "vqvae_hard_biggerset_011.pt")
    assert choice.arguments == [
        "--load",
        str(tmp_path / "cogview" / "cogview-base"),
        "--img-tokenizer-path",
        vqvae,
    ]
    assert (choice.source, choice.notice) == ("missing", None)
    assert choose_model("super-resolution", [], tmp_path).arguments[1] == str(
        tmp_path / "cogview" / "cogview-sr"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("text2image --load t2i\n", "line 1: expected 'ROLE: arguments'"),
        ("# ok\nsr: --load x\n", "line 2: expected 'ROLE: arguments' with ROLE one of common, text2image"),
        ("caption: --load 'x\n", "line 1: No closing quotation"),
    ],
)
def test_a_bad_manifest_line_is_named(tmp_path, text, message):
    path = tmp_path / "models.args"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match=f"^{path}, {message}"):
        read_manifest(path)


@pytest.mark.slow
def test_text2image_script_uses_the_bundled_models_and_says_so(tiny_cogview, tmp_path):
    pretrained = tmp_path / "pretrained"
    (pretrained / "demo").mkdir(parents=True)
    shutil.copytree(tiny_cogview["checkpoint"], pretrained / "demo" / "text2image")
    shutil.copy(tiny_cogview["vqvae"], pretrained / "demo" / "vqvae.pt")
    (pretrained / "demo" / "models.args").write_text(
        f"common: {' '.join(tiny_cogview['args'])} --img-tokenizer-path vqvae.pt\n"
        "text2image: --load text2image\n",
        encoding="utf-8",
    )
    (tmp_path / "input.txt").write_text("一只猫\n", encoding="utf-8")
    done = run_script(
        "text2image.sh", tmp_path, {"DEVICE": "cpu", "PRETRAINED_DIR": str(pretrained)}, "--batch-size", "2"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    notices = [line for line in done.stderr.splitlines() if line.startswith("text2image model:")]
    assert notices == [
        f"text2image model: the released weights are not in {pretrained / 'cogview'}; using the bundled demo "
        f"models ({pretrained / 'demo' / 'models.args'})"
    ]
    assert sorted(p.name for p in (tmp_path / "samples_text2image" / "一只猫").iterdir()) == [
        "0.jpg",
        "1.jpg",
        "concat.jpg",
    ]


def recorded_launch(tmp_path: Path, manifest_line: str, *user_args: str) -> list[str]:
    """The arguments ``text2image.sh`` passes to ``generate_samples.py``, recorded by a stand-in python.

    The stand-in (``COGVIEW_VENV``, marked as set up like the real one) runs every other call with the real
    interpreter and writes down the arguments of the one that would generate.
    """
    pretrained = tmp_path / "pretrained"
    bundled(pretrained, f"common: --num-layers 2\ntext2image: --load t2i {manifest_line}\n", ("t2i",))
    recorded = tmp_path / "generate_samples.args"
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    venv = python.parent.parent
    python.write_text(
        '#!/usr/bin/env bash\ncase "$1" in */generate_samples.py) ;; *) exec '
        f'{shlex.quote(sys.executable)} "$@" ;; esac\n'
        f'shift\nprintf "%s\\n" "$@" >{shlex.quote(str(recorded))}\n',
        encoding="utf-8",
    )
    python.chmod(0o755)
    shutil.copy(Path(sys.executable).parent.parent / ".installed", venv / ".installed")
    environment = {"DEVICE": "cpu", "PRETRAINED_DIR": str(pretrained), "COGVIEW_VENV": str(venv)}
    done = run_script("text2image.sh", tmp_path, environment, *user_args)
    assert done.returncode == 0, done.stderr[-2000:]
    return recorded.read_text(encoding="utf-8").splitlines()


def last_value(arguments: list[str], option: str) -> str:
    """The value argparse keeps for ``option``: the one after its last occurrence."""
    last = len(arguments) - 1 - arguments[::-1].index(option)
    return arguments[last + 1]


def test_a_bundled_model_overrides_the_launcher_defaults_and_the_user_overrides_both(tmp_path):
    arguments = recorded_launch(tmp_path, "--max-inference-batch-size 128 --top_k 30")
    assert last_value(arguments, "--max-inference-batch-size") == "128"  # the launcher's is 4
    assert last_value(arguments, "--top_k") == "30"  # the launcher's is 200
    assert last_value(arguments, "--batch-size") == "4"  # the launcher's, which the manifest leaves alone
    assert last_value(arguments, "--load").endswith("/t2i")
    user = ("--max-inference-batch-size", "7")
    mine = recorded_launch(tmp_path / "user", "--max-inference-batch-size 128", *user)
    assert last_value(mine, "--max-inference-batch-size") == "7"
