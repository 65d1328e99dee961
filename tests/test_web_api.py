"""The web demo's JSON API through FastAPI's test client on the tiny CogView: every endpoint, every refusal.

The results are checked against ``generation.tasks`` run directly with the same seed (file paths in,
images out), so the API's own way of building sequences from ids and uploads is tested against the
command line's query language.
"""

import argparse
import asyncio
import base64
import dataclasses
import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from arguments import get_args
from common.errors import MissingInputError
from data_utils import UnifiedTokenizer, unified_tokenizer
from generation.runtime import build_model
from generation.tasks import TASKS, TaskContext
from model import GPT2Model
from model.checkpoint import save_checkpoint
from model.partition import padded_vocab_size
from tests.helpers.tiny_cogview import tiny_cogview_argv
from tools.make_tiny_cogview import make_tiny_cogview
from web.app import create_app
from web.backend import Backend, Models, Sampling, positions_of
from web.jobs import Cancelled, Job, JobQueue
from web.server import extra_model_args, load_backend, main, web_parser
from web.uploads import Limits

SEED = 11
TOP_K = 20
# A super-resolution model unlike the tiny CogView (2 layers × 32, 96 positions, finetune 128).
SR_LAYERS, SR_HIDDEN, SR_POSITIONS, SR_FINETUNE = 1, 16, 72, 120
SR_MODEL_ARGS = (
    f"--num-layers {SR_LAYERS} --hidden-size {SR_HIDDEN} --max-position-embeddings {SR_POSITIONS} "
    f"--max-position-embeddings-finetune {SR_FINETUNE}"
)

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def model_argv(cogview: dict) -> list[str]:
    return tiny_cogview_argv(cogview, "--max-inference-batch-size", "1", "--top_k", str(TOP_K))


@pytest.fixture(scope="module")
def backend(tiny_cogview: dict):
    """The tiny model in every role (one folder, so loaded once), as ``web.server`` loads it."""
    folder = str(tiny_cogview["checkpoint"])
    web = web_parser().parse_args(["--load-caption", folder, "--load-sr", folder])
    original = unified_tokenizer._TOKENIZER
    yield load_backend(web, get_args(model_argv(tiny_cogview)))
    unified_tokenizer._TOKENIZER = original


@pytest.fixture(scope="module")
def jobs():
    queue = JobQueue(2)
    yield queue
    queue.close()


@pytest.fixture(scope="module")
def client(backend, jobs):
    with TestClient(create_app(backend, jobs)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three distinct noise images, one grayscale, one JPEG."""
    folder = tmp_path_factory.mktemp("web_images")
    rng = np.random.default_rng(3)
    paths = [folder / "a.png", folder / "b.jpg", folder / "c.png"]
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(paths[1])
    Image.fromarray(rng.integers(0, 256, (200, 320), dtype=np.uint8)).save(paths[2])
    return paths


def reference_context(
    backend, batch_size: int, post_select: int = 1, guidance_scale: float = 1.0, role: str = "base"
) -> TaskContext:
    """A task context on the model of ``role`` with the command line's settings: the reference for the API.

    Its post-selection scores with the same model: the tiny one plays every role here.
    """
    args = get_args(
        ["--batch-size", str(batch_size), "--max-inference-batch-size", "1", "--top_k", str(TOP_K)]
    )
    own = backend.models.args.get(role, backend.args)
    args.max_position_embeddings_finetune = own.max_position_embeddings_finetune
    ctx = TaskContext(
        getattr(backend.models, role),
        backend.tokenizer,
        args,
        image_size=backend.image_size,
        post_select=post_select,
        guidance_scale=guidance_scale,
    )
    ctx.generator = torch.Generator().manual_seed(SEED)
    return ctx


def pixels(png_base64: str) -> np.ndarray:
    """Decode a base64 PNG (checking that it is one) → its RGB array."""
    data = base64.b64decode(png_base64)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def as_pixels(image: torch.Tensor) -> np.ndarray:
    return image[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def upload(path: Path, field: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    return field, (path.name, path.read_bytes(), "application/octet-stream")


def png_of(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


# --- the page and the description -----------------------------------------------------------------


def test_page_files_and_info(client, backend):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="prompt"' in page.text and "/app.js" in page.text
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/style.css").status_code == 200
    info = client.get("/api/info").json()
    assert info["tasks"] == {
        task: True for task in ("text2image", "image2text", "post-selection", "super-resolution")
    }
    assert info["options"] == {"post_select": True, "guidance_scale": True}
    assert info["limits"]["max_candidates"] == 32 and info["limits"]["max_guidance_scale"] == 20
    assert info["defaults"]["top_k"] == TOP_K and info["image_size"] == 256
    assert any(ord(ch) > 0x4E00 for ch in "".join(info["examples"])), "Chinese example prompts"
    assert backend.models.base is backend.models.caption is backend.models.super_resolution


@pytest.mark.parametrize(
    "path", ["/static/../app.py", "/..%2F..%2Fetc%2Fpasswd", "/index.html", "/web/app.py"]
)
def test_no_client_path_reaches_the_filesystem(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}


# --- each endpoint against the command line's tasks ------------------------------------------------


def test_text2image_equals_the_text2image_task(client, backend):
    prompt = "一只可爱的猫"
    response = client.post("/api/text2image", json={"prompt": prompt, "num_images": 2, "seed": SEED})
    assert response.status_code == 200, response.text
    images = [pixels(png) for png in response.json()["images"]]
    expected = TASKS["text2image"].run(reference_context(backend, 2), [prompt]).samples
    assert len(images) == len(expected) == 2
    for got, want in zip(images, expected, strict=True):
        assert got.shape == (256, 256, 3)
        np.testing.assert_array_equal(got, as_pixels(want))
    assert not np.array_equal(images[0], images[1]), "the two samples differ"


def test_text2image_stream_reports_progress_then_each_image(client):
    body = {"prompt": "a red cat", "num_images": 2, "seed": SEED, "temperature": 0.9}
    with client.stream("POST", "/api/text2image?stream=true", json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    kinds = [event["event"] for event in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done"
    progress = [(event["done"], event["total"]) for event in events if event["event"] == "progress"]
    assert progress[-1] == (128, 128) and [done for done, _ in progress] == sorted({d for d, _ in progress})
    images = [event for event in events if event["event"] == "image"]
    assert [event["index"] for event in images] == [0, 1]
    last_progress = len(kinds) - 1 - kinds[::-1].index("progress")
    assert kinds.index("image") < last_progress, "the first image comes before the second one is drawn"
    assert all(pixels(event["png"]).shape == (256, 256, 3) for event in images)


def test_text2image_post_select_equals_the_text2image_task(client, backend):
    """K candidates per image, the best kept: the images and the report line of ``--post-select 3``."""
    prompt = "一只可爱的猫"
    body = {"prompt": prompt, "num_images": 2, "seed": SEED, "post_select": 3}
    response = client.post("/api/text2image", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    expected = TASKS["text2image"].run(reference_context(backend, 2, post_select=3), [prompt])
    assert len(result["images"]) == len(expected.samples) == 2, "the kept images, not the candidates"
    for got, want in zip(result["images"], expected.samples, strict=True):
        np.testing.assert_array_equal(pixels(got), as_pixels(want))
    (line,) = [line for line in expected.report if line.startswith("post-selection")]
    picks = [kept["candidate"] for kept in result["post_selection"]]
    assert line.startswith(f"post-selection: kept candidate {picks[0]}, {picks[1]} of 3 per image")
    reported = [float(x) for x in re.search(r"scores (.*)\)", line).group(1).split(", ")]
    np.testing.assert_allclose([kept["score"] for kept in result["post_selection"]], reported, atol=1e-3)
    # the candidates are the six images of the same seed without post-selection, in order
    drawn = client.post("/api/text2image", json={**body, "num_images": 6, "post_select": 1}).json()
    assert "post_selection" not in drawn
    assert result["images"] == [drawn["images"][3 * group + pick] for group, pick in enumerate(picks)]


def test_text2image_levers_default_to_the_server_s_own(backend, jobs):
    """A request that leaves the levers out gets the server's --post-select / --guidance-scale (the
    bundled demo model's manifest defaults), shown in /api/info; an explicit 1 still turns them off."""
    args = argparse.Namespace(**{**vars(backend.args), "post_select": 3, "guidance_scale": 2.0})
    served = Backend(backend.models, backend.tokenizer, args, backend.image_size)
    body = {"prompt": "一只可爱的猫", "num_images": 1, "seed": SEED}
    with TestClient(create_app(served, jobs)) as client:
        defaults = client.get("/api/info").json()["defaults"]
        assert (defaults["post_select"], defaults["guidance_scale"]) == (3, 2.0)
        implicit = client.post("/api/text2image", json=body).json()
        explicit = client.post("/api/text2image", json={**body, "post_select": 3, "guidance_scale": 2}).json()
        off = client.post("/api/text2image", json={**body, "post_select": 1, "guidance_scale": 1}).json()
    assert implicit["images"] == explicit["images"] and len(implicit["post_selection"]) == 1
    assert "post_selection" not in off and off["images"] != implicit["images"]


def test_text2image_guidance_equals_the_text2image_task(client, backend):
    prompt = "a red cat"
    body = {"prompt": prompt, "num_images": 2, "seed": SEED, "guidance_scale": 3}
    guided = [pixels(png) for png in client.post("/api/text2image", json=body).json()["images"]]
    expected = TASKS["text2image"].run(reference_context(backend, 2, guidance_scale=3), [prompt]).samples
    for got, want in zip(guided, expected, strict=True):
        np.testing.assert_array_equal(got, as_pixels(want))
    plain = client.post("/api/text2image", json={**body, "guidance_scale": 1}).json()["images"]
    assert not np.array_equal(pixels(plain[0]), guided[0]), "guidance changes the images"


def test_text2image_post_select_sums_the_scorers_as_the_text2image_task(backend, tmp_path_factory):
    """With ``--post-select-load`` models the candidates rank by the sum of their scores, as in the task."""
    other_folder = make_tiny_cogview(tmp_path_factory.mktemp("scorer") / "tiny", seed=1)["checkpoint"]
    other = build_model(backend.args, backend.tokenizer.num_tokens, torch.device("cpu"), load=other_folder)
    scorers = (backend.models.base, other)
    models = dataclasses.replace(backend.models, scorers=scorers)
    scored = Backend(models, backend.tokenizer, backend.args, backend.image_size)
    prompt = "一只可爱的猫"
    settings = Sampling(temperature=1.0, top_k=TOP_K, seed=SEED, post_select=3)
    ids, caption_ids = scored.text2image_ids(prompt), scored.check_scored_prompt(prompt)
    kept = scored.text2image(ids, 2, settings, Recorder(), caption_ids)
    context = dataclasses.replace(reference_context(backend, 2, post_select=3), caption_models=scorers)
    (line,) = [line for line in TASKS["text2image"].run(context, [prompt]).report if "post-selection" in line]
    picks = [details["candidate"] for details in kept]
    assert line.startswith(f"post-selection: kept candidate {picks[0]}, {picks[1]} of 3 per image")
    reported = [float(x) for x in re.search(r"scores (.*)\)", line).group(1).split(", ")]
    np.testing.assert_allclose([details["score"] for details in kept], reported, atol=1e-3)


def test_the_scorers_are_checked_and_loaded_once_per_folder(tiny_cogview, tmp_path):
    folder = str(tiny_cogview["checkpoint"])
    missing = get_args([*model_argv(tiny_cogview), "--post-select-load", folder, str(tmp_path / "gone")])
    with pytest.raises(MissingInputError, match=f"^--post-select-load: .*{tmp_path / 'gone'}"):
        load_backend(web_parser().parse_args([]), missing)
    original = unified_tokenizer._TOKENIZER
    try:
        loaded = load_backend(
            web_parser().parse_args(["--load-caption", folder]),
            get_args([*model_argv(tiny_cogview), "--post-select-load", folder]),
        )
    finally:
        unified_tokenizer._TOKENIZER = original
    assert loaded.models.scorers == (loaded.models.base,) and loaded.models.scorers[0] is loaded.models.base
    assert loaded.models.caption is loaded.models.base


class Recorder:
    """A :class:`web.backend.Reporter` that records what a task reports and cancels after ``stop_after``."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.progress_calls: list[tuple[int, int]] = []
        self.images: list[tuple[int, dict]] = []

    def progress(self, done: int, total: int) -> None:
        if self.stop_after is not None and done > self.stop_after:
            raise Cancelled
        self.progress_calls.append((done, total))

    def image(self, index: int, png: bytes, **details) -> None:
        assert png.startswith(b"\x89PNG")
        self.images.append((index, details))


def test_text2image_levers_count_every_candidate_and_cancel(backend):
    """Progress counts the tokens of all K·n candidates (guided or not); a cancel stops the drawing."""
    ids = backend.text2image_ids("一只猫")
    caption_ids = backend.check_scored_prompt("一只猫")
    settings = Sampling(temperature=1.0, top_k=TOP_K, seed=SEED, post_select=2, guidance_scale=2.0)
    recorder = Recorder()
    kept = backend.text2image(ids, 2, settings, recorder, caption_ids)
    total = 2 * 2 * backend.num_codes
    assert recorder.progress_calls[-1] == (total, total) and len(recorder.progress_calls) == total
    assert [done for done, _ in recorder.progress_calls] == list(range(1, total + 1))
    assert [index for index, _ in recorder.images] == [0, 1]
    assert [details for _, details in recorder.images] == kept and {*kept[0]} == {"candidate", "score"}
    cancelled = Recorder(stop_after=3 * backend.num_codes)  # within the second image's last candidate
    with pytest.raises(Cancelled):
        backend.text2image(ids, 2, settings, cancelled, caption_ids)
    assert [index for index, _ in cancelled.images] == [0], "the first image, kept before the cancel"


def test_image2text_equals_the_image2text_task(client, backend, image_files):
    response = client.post(
        "/api/image2text", files=[upload(image_files[0])], data={"num_captions": "3", "seed": SEED}
    )
    assert response.status_code == 200, response.text
    captions = response.json()["captions"]
    expected = TASKS["image2text"].run(reference_context(backend, 3), [str(image_files[0])]).line.split("\t")
    assert captions == expected and len(captions) == 3


def test_post_selection_equals_the_post_selection_task(client, backend, image_files):
    caption = "a red cat 一只猫"
    files = [upload(path, "images") for path in image_files]
    response = client.post("/api/post-selection", files=files, data={"caption": caption})
    assert response.status_code == 200, response.text
    result = response.json()
    line = TASKS["post-selection"].run(reference_context(backend, 1), [caption, *map(str, image_files)]).line
    np.testing.assert_allclose(result["scores"], [float(score) for score in line.split("\t")], atol=1e-4)
    assert result["ranking"] == sorted(range(3), key=lambda i: -result["scores"][i])
    assert len(set(result["scores"])) == 3


def test_super_resolution_equals_the_super_resolution_task(client, backend, image_files):
    prompt = "一只猫"
    response = client.post(
        "/api/super-resolution", files=[upload(image_files[1])], data={"prompt": prompt, "seed": str(SEED)}
    )
    assert response.status_code == 200, response.text
    (image,) = response.json()["images"]
    expected = TASKS["super-resolution"].run(reference_context(backend, 1), [prompt, str(image_files[1])])
    np.testing.assert_array_equal(pixels(image), as_pixels(expected.samples[0]))
    assert pixels(image).shape == (512, 512, 3)


@pytest.fixture(scope="module")
def sr_checkpoint(backend, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random super-resolution GPT of ``SR_MODEL_ARGS`` over the tiny CogView's vocabulary."""
    torch.manual_seed(5)
    model = GPT2Model(
        num_layers=SR_LAYERS,
        vocab_size=padded_vocab_size(backend.tokenizer.num_tokens, 1),
        hidden_size=SR_HIDDEN,
        num_attention_heads=2,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=SR_POSITIONS,
        max_memory_length=0,
        checkpoint_activations=False,
    )
    folder = tmp_path_factory.mktemp("sr_model") / "checkpoint"
    save_checkpoint(model, folder, 1)
    return folder


def serve(tiny_cogview: dict, *web_argv: str) -> Backend:
    """``load_backend`` of the tiny CogView's arguments and ``web_argv``, as ``web.server.main`` calls it."""
    argv = model_argv(tiny_cogview)
    web, args = web_parser().parse_args(list(web_argv)), get_args(argv)
    original = unified_tokenizer._TOKENIZER
    try:
        return load_backend(web, args, extra_model_args(web, argv, args))
    finally:
        unified_tokenizer._TOKENIZER = original


def test_a_super_resolution_model_of_its_own_architecture(tiny_cogview, sr_checkpoint, jobs, image_files):
    """``--sr-model-args``: the SR model is built and length-checked with its own arguments only."""
    base = str(tiny_cogview["checkpoint"])
    backend = serve(
        tiny_cogview,
        "--load-caption",
        base,
        "--load-sr",
        str(sr_checkpoint),
        "--sr-model-args",
        SR_MODEL_ARGS,
    )
    sr = backend.models.super_resolution
    assert positions_of(sr) == SR_POSITIONS and positions_of(backend.models.base) == 96
    assert len(sr.transformer.layers) == SR_LAYERS and sr.word_embeddings.weight.shape[1] == SR_HIDDEN
    assert backend.models.caption is backend.models.base, "one folder, one architecture: loaded once"
    assert backend.args.max_position_embeddings_finetune == 128
    prompt = "一只猫"
    with TestClient(create_app(backend, jobs)) as client:
        assert client.get("/api/info").json()["tasks"]["super-resolution"] is True
        response = client.post(
            "/api/super-resolution",
            files=[upload(image_files[1])],
            data={"prompt": prompt, "seed": str(SEED)},
        )
        assert response.status_code == 200, response.text
        (image,) = response.json()["images"]
        context = reference_context(backend, 1, role="super_resolution")
        expected = TASKS["super-resolution"].run(context, [prompt, str(image_files[1])])
        np.testing.assert_array_equal(pixels(image), as_pixels(expected.samples[0]))
        assert pixels(image).shape == (512, 512, 3)
        base_sr = TASKS["super-resolution"].run(reference_context(backend, 1), [prompt, str(image_files[1])])
        assert not np.array_equal(pixels(image), as_pixels(base_sr.samples[0])), "not the base model's"
        long = client.post(
            "/api/super-resolution", files=[upload(image_files[1])], data={"prompt": "猫 " * 60}
        )
    assert long.status_code == 400
    assert f"but the model takes at most {SR_FINETUNE};" in long.json()["error"], "the SR model's length"


def test_the_same_folder_and_architecture_for_several_roles_is_loaded_once(tiny_cogview):
    base = str(tiny_cogview["checkpoint"])
    backend = serve(tiny_cogview, "--load-sr", base, "--sr-model-args", "--num-layers 2 --hidden-size=32")
    assert backend.models.super_resolution is backend.models.base


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ("--bogus 3", "--sr-model-args: unrecognized arguments: --bogus 3"),
        ("--num-layers two", "--sr-model-args: argument --num-layers: invalid int value: 'two'"),
        ("--image-size 128", "--sr-model-args: --image-size cannot differ between the models (they share"),
        ("--img-tokenizer-path=/elsewhere.pt", "--sr-model-args: --img-tokenizer-path cannot differ"),
        ("--text-tokenizer-path x.model", "--sr-model-args: --text-tokenizer-path cannot differ"),
        ("--top_k 3", "--sr-model-args: --top_k cannot differ"),
        ("'--num-layers 1", "--sr-model-args: No closing quotation: "),
    ],
)
def test_bad_model_args_are_one_line(tiny_cogview, tmp_path, capsys, model_args, message):
    argv = ["--load-sr", str(tmp_path / "unread"), f"--sr-model-args={model_args}", "--port", "0"]
    assert main([*argv, *model_argv(tiny_cogview)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"web_demo: {message}") and captured.err.count("\n") == 1, captured.err
    assert captured.out == ""


def test_model_args_without_their_model_are_refused(tiny_cogview, capsys):
    assert main(["--caption-model-args", "--num-layers 1", *model_argv(tiny_cogview)]) == 2
    assert capsys.readouterr().err == (
        "web_demo: --caption-model-args describes the model of --load-caption, which is not given\n"
    )


def test_client_text_is_never_the_query_language(client, backend, monkeypatch):
    """``[Image]path`` and command names in a prompt are plain text: no file is opened, no command made."""

    def no_files(*_args, **_kwargs):
        raise AssertionError("a client's prompt opened a file")

    monkeypatch.setattr(UnifiedTokenizer, "read_img", no_files)
    ids = backend.text2image_ids("[Image]/etc/passwd [SEP]")
    commands = [token for token in ids if token >= backend.tokenizer.command_start]
    assert commands == [backend.tokenizer[name] for name in ("[ROI1]", "[TINY]", "[BOI1]")]
    response = client.post("/api/text2image", json={"prompt": "[Image]/etc/passwd", "seed": 1})
    assert response.status_code == 200 and len(response.json()["images"]) == 1


# --- refusals: one sentence each -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prompt": "   "}, 400, "prompt is empty"),
        ({"prompt": "猫" * 201}, 400, "prompt has 201 characters; the limit is 200"),
        ({"prompt": "猫 " * 60}, 400, "the prompt makes a sequence of"),
        ({"prompt": "cat", "num_images": 9}, 400, "num_images is 9; the limit is 8"),
        ({"prompt": "cat", "num_images": 0}, 422, "num_images: Input should be greater than or equal to 1"),
        ({"prompt": "cat", "temperature": -1}, 422, "temperature: Input should be greater than 0"),
        ({"prompt": "cat", "top_k": "many"}, 422, "top_k: Input should be a valid integer"),
        ({"prompt": "cat", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ({"prompt": "cat", "post_select": 0}, 422, "post_select: Input should be greater than or equal to 1"),
        (
            {"prompt": "cat", "num_images": 4, "post_select": 9},
            400,
            "num_images × post_select is 4 × 9 = 36 candidate images; the limit is 32",
        ),
        (
            {"prompt": "cat", "guidance_scale": 21},
            422,
            "guidance_scale: Input should be less than or equal to 20",
        ),
        (
            {"prompt": "cat", "guidance_scale": -1},
            422,
            "guidance_scale: Input should be greater than or equal to 0",
        ),
        ({}, 422, "prompt: Field required"),
        ([1, 2], 422, "the request needs a JSON object body"),
    ],
)
def test_bad_text2image_requests(client, body, status, message):
    response = client.post("/api/text2image", json=body)
    assert response.status_code == status
    assert message in response.json()["error"] and "\n" not in response.json()["error"]


def test_levers_are_refused_where_they_do_not_apply(backend, jobs, image_files):
    """post_select without a caption model is a 400; image2text has no quality levers (422)."""
    base_only = Backend(Models(backend.models.base), backend.tokenizer, backend.args, backend.image_size)
    assert base_only.options == {"post_select": False, "guidance_scale": True}
    with TestClient(create_app(base_only, jobs)) as client:
        response = client.post("/api/text2image", json={"prompt": "cat", "post_select": 2})
    assert response.status_code == 400 and response.json() == {
        "error": "post_select needs a model to score with, and this server has none loaded "
        "(--load-caption or --post-select-load)"
    }
    with TestClient(create_app(backend, jobs)) as client:
        response = client.post("/api/image2text", files=[upload(image_files[0])], data={"post_select": "2"})
    assert response.status_code == 422 and response.json() == {
        "error": "post_select: Extra inputs are not permitted"
    }


def test_malformed_json_and_wrong_methods(client):
    response = client.post(
        "/api/text2image", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json() == {"error": "the request body is not valid JSON"}
    assert client.get("/api/text2image").status_code == 405
    assert client.post("/api/nothing").status_code == 404


def test_bad_uploads(backend, jobs, image_files):
    limits = Limits(max_upload_bytes=200_000, max_image_pixels=300 * 300, max_images=3)
    with TestClient(create_app(backend, jobs, limits)) as client:

        def post(endpoint: str, files, data=None):
            response = client.post(endpoint, files=files, data=data or {})
            return response.status_code, response.json()["error"]

        text = ("image", ("notes.png", b"just some text, not a PNG", "image/png"))
        assert post("/api/image2text", [text]) == (
            415,
            "image: the file is not an image (PNG, JPEG, WEBP, BMP, GIF are accepted)",
        )
        tiff = ("image", ("x.tif", png_of(np.zeros((8, 8, 3), np.uint8), "TIFF"), "image/tiff"))
        assert post("/api/image2text", [tiff]) == (
            415,
            "image: a TIFF image; PNG, JPEG, WEBP, BMP, GIF are accepted",
        )
        noise = np.random.default_rng(0).integers(0, 256, (290, 290, 3), dtype=np.uint8)
        big = ("image", ("big.bmp", png_of(noise, "BMP"), "image/bmp"))
        assert post("/api/image2text", [big]) == (
            413,
            "image: the file is 0.2 MiB; the limit is 0.190735 MiB",
        )
        wide = ("image", ("wide.png", png_of(np.zeros((301, 300, 3), np.uint8)), "image/png"))
        assert post("/api/image2text", [wide]) == (
            413,
            "image: 300×301 pixels; the limit is 90,000 pixels",
        )
        truncated = ("image", ("cut.png", image_files[0].read_bytes()[:3000], "image/png"))
        status, message = post("/api/image2text", [truncated])
        assert status == 415 and message.startswith("image: the file cannot be decoded (")
        assert post("/api/image2text", [("image", ("e.png", b"", "image/png"))]) == (
            400,
            "image: the file is empty",
        )
        assert post("/api/image2text", [], {"image": "/etc/passwd"}) == (
            400,
            "image is missing: send it as a multipart file field",
        )
        assert post("/api/image2text", [upload(image_files[0])], {"num_captions": "99"})[0] == 422
        assert post("/api/image2text", [upload(image_files[0])], {"path": "/etc"}) == (
            422,
            "path: Extra inputs are not permitted",
        )
        assert post("/api/post-selection", [], {"caption": "a cat"}) == (
            400,
            "images is missing: send one or more multipart file fields named images",
        )
        four = [upload(image_files[0], "images")] * 4
        assert post("/api/post-selection", four, {"caption": "a cat"})[0] == 400  # more files than max_images
        assert post("/api/super-resolution", [upload(image_files[0])], {"prompt": ""}) == (
            400,
            "prompt is empty",
        )
        huge = client.post("/api/image2text", content=b"x" * 10, headers={"content-length": str(10**9)})
        assert huge.status_code == 413 and "larger than the limit" in huge.json()["error"]
        head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        chunks = iter([head] + [b"y" * 100_000] * 20)  # no Content-Length: the limit is counted
        chunked = client.post(
            "/api/image2text", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert chunked.status_code == 413 and "larger than the limit" in chunked.json()["error"]
        not_form = client.post("/api/image2text", json={"image": "a.png"})
        assert not_form.status_code == 400 and "image is missing" in not_form.json()["error"]


# --- the queue -------------------------------------------------------------------------------------


def test_a_full_queue_answers_429_and_recovers(backend):
    gate = threading.Event()
    loop = asyncio.new_event_loop()
    queue = JobQueue(1)
    try:
        queue.submit(Job("blocker", lambda job: gate.wait(30) and {}, loop))  # runs, holding the worker
        while queue.status()["running"] != "blocker":
            threading.Event().wait(0.01)
        queue.submit(Job("waiting", lambda job: {}, loop))  # fills the one waiting place
        with TestClient(create_app(backend, queue)) as client:
            response = client.post("/api/text2image", json={"prompt": "cat"})
            assert response.status_code == 429 and response.headers["retry-after"] == "1"
            assert response.json() == {
                "error": "the server is busy: 1 requests are already waiting; try again in a moment"
            }
            gate.set()
            assert client.post("/api/text2image", json={"prompt": "cat", "seed": 1}).status_code == 200
            status = client.get("/api/status").json()
        assert status["rejected"] == 1 and status["completed"] == 3 and status["peak_waiting"] == 1
    finally:
        gate.set()
        queue.close()
        loop.close()


def test_a_bug_in_a_job_is_a_500_with_one_line_and_the_worker_goes_on(caplog):
    loop = asyncio.new_event_loop()
    queue = JobQueue(2)
    events: list[dict] = []

    def broken(job: Job) -> dict:
        raise RuntimeError("a programming error")

    try:
        failing, fine = Job("broken", broken, loop), Job("fine", lambda job: {"ok": True}, loop)
        queue.submit(failing)
        queue.submit(fine)
        for job in (failing, fine):
            while True:
                event = loop.run_until_complete(job.next_event())
                events.append(event)
                if event["event"] in ("done", "error"):
                    break
        assert {"event": "error", "status": 500, "error": "internal error (see the server's log)"} in events
        assert events[-1] == {"event": "done", "ok": True}
        assert "a programming error" in caplog.text, "the traceback goes to the server's log"
        assert queue.status()["failed"] == 1 and queue.status()["completed"] == 1
    finally:
        queue.close()
        loop.close()


def test_the_server_binds_to_this_machine_unless_told():
    assert web_parser().parse_args([]).host == "127.0.0.1"
    assert web_parser().parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


def test_a_cancelled_job_stops_at_its_next_step_and_the_worker_goes_on(backend):
    loop = asyncio.new_event_loop()
    queue = JobQueue(2)
    steps: list[int] = []
    started = threading.Event()

    def endless(job: Job) -> dict:
        for step in range(10**6):
            steps.append(step)
            started.set()
            job.progress(step, 10**6)
            threading.Event().wait(0.001)
        return {}

    try:
        job = Job("endless", endless, loop)
        queue.submit(job)
        assert started.wait(10)
        job.cancel()
        later = Job("later", lambda job: {"ok": True}, loop)
        queue.submit(later)
        while queue.status()["completed"] < 1:
            threading.Event().wait(0.01)
        status = queue.status()
        assert status["cancelled"] == 1 and status["completed"] == 1 and len(steps) < 10**6
        with pytest.raises(Cancelled):
            job.progress(1, 2)
    finally:
        queue.close()
        loop.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_api_on_cuda_scores_like_the_cpu_and_draws_pngs(tiny_cogview, client, image_files):
    folder = str(tiny_cogview["checkpoint"])
    web = web_parser().parse_args(["--load-caption", folder, "--load-sr", folder])
    argv = [*model_argv(tiny_cogview), "--device", "cuda"]
    original = unified_tokenizer._TOKENIZER
    queue = JobQueue(2)
    try:
        with TestClient(create_app(load_backend(web, get_args(argv)), queue)) as cuda_client:
            files = [upload(path, "images") for path in image_files]
            scores = {
                name: api.post("/api/post-selection", files=files, data={"caption": "一只猫"}).json()[
                    "scores"
                ]
                for name, api in (("cpu", client), ("cuda", cuda_client))
            }
            np.testing.assert_allclose(scores["cuda"], scores["cpu"], atol=1e-3)
            drawn = cuda_client.post("/api/text2image", json={"prompt": "一只猫", "num_images": 2, "seed": 1})
            assert [pixels(png).shape for png in drawn.json()["images"]] == [(256, 256, 3)] * 2
            levers = {"post_select": 2, "guidance_scale": 2}
            chosen = cuda_client.post("/api/text2image", json={"prompt": "一只猫", "num_images": 2, **levers})
            assert len(chosen.json()["images"]) == len(chosen.json()["post_selection"]) == 2
            magnified = cuda_client.post(
                "/api/super-resolution", files=[upload(image_files[0])], data={"prompt": "猫"}
            )
            assert pixels(magnified.json()["images"][0]).shape == (512, 512, 3)
    finally:
        queue.close()
        unified_tokenizer._TOKENIZER = original
