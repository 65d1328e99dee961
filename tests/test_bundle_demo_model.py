"""tools/bundle_demo_model.py: the bundled weights and the manifest's roles, in every bundling order, read
back through common.model_sources (what the launchers and the web demo use)."""

import itertools
import shutil
from pathlib import Path

import pytest
import torch

from arguments import get_args
from common.model_sources import choose_model
from data_utils import UnifiedTokenizer
from model.checkpoint import save_checkpoint
from tools import bundle_demo_model
from tools.make_tiny_cogview import tiny_gpt

DEMO = Path(__file__).resolve().parents[1] / "pretrained" / "demo"
MAIN_ARCHITECTURE = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2"]
MAIN = [*MAIN_ARCHITECTURE, "--max-position-embeddings", "96", "--image-size", "32"]
SR = ["--model", "super-resolution", *MAIN_ARCHITECTURE, "--max-position-embeddings", "72"]
SR += ["--max-position-embeddings-finetune", "104", "--image-size", "32"]
CAPTION = ["--model", "caption", *MAIN]
MAIN_MANIFEST = """\
# The bundled demo GPT (scripts/train_demo.sh): text2image, and captions unless a caption GPT follows.
common: --num-layers 1 --hidden-size 32 --num-attention-heads 2 --max-position-embeddings 96
common: --img-tokenizer-path vqvae_demo.pt --text-tokenizer-path demo_text.model --image-size 32
text2image: --load cogview-demo --post-select-load cogview-demo
caption: --load cogview-demo
"""
SR_LINES = """\
# The bundled super-resolution GPT (scripts/train_demo.sh), with its own architecture.
super-resolution: --num-layers 1 --hidden-size 32 --num-attention-heads 2 --max-position-embeddings 72 \
--max-position-embeddings-finetune 104 --load cogview-demo-sr
"""
CAPTION_LINES = """\
# The bundled caption GPT (scripts/train_demo.sh): the demo GPT finetuned on captions, for image2text and \
post-selection.
caption: --load cogview-demo-caption
text2image: --post-select-load cogview-demo cogview-demo-caption
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Training-run folders of random tiny GPTs over the demo vocabulary (iterations 7, 8 and 9)."""
    root = tmp_path_factory.mktemp("runs")
    num_tokens = UnifiedTokenizer(DEMO / "vqvae_demo.pt", "cpu", txt_tokenizer_path=DEMO / "demo_text.model")
    torch.manual_seed(0)
    for name, iteration in (("main", 7), ("caption", 8), ("sr", 9)):
        save_checkpoint(tiny_gpt(num_tokens.num_tokens), root / name, iteration)
    return {name: root / name for name in ("main", "caption", "sr")}


def trained_and_bundled(run: Path, model_folder: Path, iteration: int) -> tuple[dict, dict]:
    """The weights of a training run's checkpoint and the whole bundled file of it."""
    trained = torch.load(run / str(iteration) / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    bundled = torch.load(model_folder / str(iteration) / "mp_rank_00_model_states.pt", weights_only=True)
    return trained, bundled


def new_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "demo"
    bundle.mkdir()
    for name in bundle_demo_model.TOKENIZERS:
        shutil.copy(DEMO / name, bundle / name)
    return bundle


def run_tool(run: Path, bundle: Path, arguments: list[str]) -> None:
    assert bundle_demo_model.main([str(run), "--bundle", str(bundle), *arguments]) == 0


def test_the_main_model_alone_keeps_its_manifest(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["main"], bundle, MAIN)
    assert (bundle / "models.args").read_text(encoding="utf-8") == MAIN_MANIFEST
    assert (bundle / "cogview-demo" / "latest_checkpointed_iteration.txt").read_text().strip() == "7"


def test_sampling_defaults_go_on_the_text2image_line_and_reach_the_launcher(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["main"], bundle, [*MAIN, "--sampling", "--top_k 30 --guidance-scale 3"])
    expected = MAIN_MANIFEST.replace(
        "--post-select-load cogview-demo\n", "--post-select-load cogview-demo --top_k 30 --guidance-scale 3\n"
    )
    assert (bundle / "models.args").read_text(encoding="utf-8") == expected
    model = str(bundle / "cogview-demo")
    roles = {"--load": model, "--post-select-load": model, "--top_k": "30", "--guidance-scale": "3"}
    assert choose_model("text2image", [], tmp_path).arguments[-8:] == [
        w for pair in roles.items() for w in pair
    ]
    assert "--top_k" not in choose_model("caption", [], tmp_path).arguments
    with pytest.raises(SystemExit):
        bundle_demo_model.parse_args(
            [str(runs["sr"]), "--bundle", str(bundle), *SR, "--sampling", "--top_k 1"]
        )


ORDERS = [
    order
    for order in itertools.permutations(("main", "caption", "sr"))
    if order.index("main") < order.index("caption")
]


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_gives_one_manifest_with_each_role(runs, tmp_path, order):
    bundle = new_bundle(tmp_path)
    for which in order:
        run_tool(runs[which], bundle, {"main": MAIN, "caption": CAPTION, "sr": SR}[which])
    assert (bundle / "models.args").read_text(encoding="utf-8") == MAIN_MANIFEST + CAPTION_LINES + SR_LINES
    trained, bundled = trained_and_bundled(runs["sr"], bundle / "cogview-demo-sr", 9)
    assert "optimizer" not in bundled and bundled["module"].keys() == trained.keys()
    for key, weight in trained.items():  # stored in fp16, as the released weights
        torch.testing.assert_close(bundled["module"][key], weight.half(), rtol=0, atol=0)


def test_fp32_storage_keeps_the_trained_weights_exactly(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["main"], bundle, [*MAIN, "--dtype", "fp32"])
    trained, bundled = trained_and_bundled(runs["main"], bundle / "cogview-demo", 7)
    for key, weight in trained.items():
        torch.testing.assert_close(bundled["module"][key], weight, rtol=0, atol=0)


def test_the_caption_model_takes_the_caption_role_and_joins_text2image_s_scorer(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["main"], bundle, MAIN)
    run_tool(runs["caption"], bundle, CAPTION)
    caption, main = str(bundle / "cogview-demo-caption"), str(bundle / "cogview-demo")
    text2image = choose_model("text2image", [], tmp_path).arguments
    assert text2image[-7:] == [
        "--load",
        main,
        "--post-select-load",
        main,
        "--post-select-load",
        main,
        caption,
    ]
    assert get_args(text2image).post_select_load == [main, caption]  # the last one is read
    caption_role = choose_model("caption", [], tmp_path).arguments
    assert caption_role[-4:] == ["--load", main, "--load", caption]  # the last is the one read
    web = choose_model("web", [], tmp_path).arguments
    assert web[web.index("--load-caption") + 1] == caption
    assert not any(word.startswith("--caption-model-args") for word in web)  # the main model's architecture


def test_the_caption_models_sampling_defaults_go_on_its_caption_line_only(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["main"], bundle, MAIN)
    run_tool(runs["caption"], bundle, [*CAPTION, "--sampling", "--temperature 0.5"])
    caption = str(bundle / "cogview-demo-caption")
    assert choose_model("caption", [], tmp_path).arguments[-4:] == ["--load", caption, "--temperature", "0.5"]
    assert "--temperature" not in choose_model("text2image", [], tmp_path).arguments


def test_a_caption_model_needs_the_main_model_of_its_architecture_first(runs, tmp_path, capsys):
    bundle = new_bundle(tmp_path)
    assert bundle_demo_model.main([str(runs["caption"]), "--bundle", str(bundle), *CAPTION]) == 2
    assert "has no main model of the architecture" in capsys.readouterr().err
    run_tool(runs["main"], bundle, MAIN)
    other = [*CAPTION[: CAPTION.index("96")], "112", *CAPTION[CAPTION.index("96") + 1 :]]
    assert bundle_demo_model.main([str(runs["caption"]), "--bundle", str(bundle), *other]) == 2
    assert not (bundle / "cogview-demo-caption").exists()
    assert (bundle / "models.args").read_text(encoding="utf-8") == MAIN_MANIFEST


def test_the_super_resolution_model_alone_names_the_tokenizers(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["sr"], bundle, SR)
    expected = bundle_demo_model.tokenizer_line(32) + SR_LINES
    assert (bundle / "models.args").read_text(encoding="utf-8") == expected
    assert choose_model("text2image", [], tmp_path).source == "missing"  # no main model yet
    assert choose_model("super-resolution", [], tmp_path).source == "bundled"


def test_the_launchers_read_each_role_and_the_web_demo_gives_sr_its_own_architecture(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["main"], bundle, MAIN)
    run_tool(runs["sr"], bundle, SR)
    main = choose_model("text2image", [], tmp_path)
    tokenizers = ["--img-tokenizer-path", str(bundle / "vqvae_demo.pt")]
    tokenizers += ["--text-tokenizer-path", str(bundle / "demo_text.model"), "--image-size", "32"]
    main_architecture = [*MAIN_ARCHITECTURE, "--max-position-embeddings", "96"]
    model = str(bundle / "cogview-demo")
    assert main.arguments == [*main_architecture, *tokenizers, "--load", model, "--post-select-load", model]
    sr = choose_model("super-resolution", [], tmp_path)
    sr_architecture = [*MAIN_ARCHITECTURE, "--max-position-embeddings", "72"]
    sr_architecture += ["--max-position-embeddings-finetune", "104"]
    assert sr.arguments == [
        *main_architecture,
        *tokenizers,
        *sr_architecture,
        *("--load", str(bundle / "cogview-demo-sr")),
    ]  # its own architecture after common's: argparse keeps the last value
    web = choose_model("web", [], tmp_path)
    assert web.arguments == [
        *main.arguments,
        *("--load-caption", model, "--load-sr", str(bundle / "cogview-demo-sr")),
        "--sr-model-args=" + " ".join(sr_architecture),
    ]
    assert web.notice.endswith("; its super-resolution model with its own architecture (--sr-model-args)")
    assert "goes without" not in web.notice
    folder = str(tmp_path / "mine")
    mine = choose_model("web", ["--load-sr", folder], tmp_path)  # the user's SR model, not the bundle's
    assert mine.arguments == [*main.arguments, "--load-caption", model]


def test_a_super_resolution_model_of_the_same_layers_still_brings_its_finetune_length(runs, tmp_path):
    bundle = new_bundle(tmp_path)
    run_tool(runs["main"], bundle, MAIN)
    same = [*SR[: SR.index("72")], "96", *SR[SR.index("72") + 1 :]]
    run_tool(runs["sr"], bundle, same)
    web = choose_model("web", [], tmp_path)
    assert web.arguments[-3:] == [
        "--load-sr",
        str(bundle / "cogview-demo-sr"),
        "--sr-model-args="
        + " ".join([*MAIN_ARCHITECTURE, "--max-position-embeddings", "96"])
        + " --max-position-embeddings-finetune 104",
    ]  # the launchers' 1345 is not the SR model's


def test_the_finetune_length_belongs_to_the_super_resolution_model(runs, tmp_path, capsys):
    bundle = new_bundle(tmp_path)
    with pytest.raises(SystemExit):
        bundle_demo_model.main([str(runs["sr"]), "--bundle", str(bundle), *SR[:-4], *SR[-2:]])
    assert "--max-position-embeddings-finetune goes with --model super-resolution" in capsys.readouterr().err
    assert not (bundle / "models.args").exists()
