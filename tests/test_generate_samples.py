"""generate_samples.py end to end on a tiny random CogView: every task, its files, its errors, the scripts.

The tiny model (``tiny_cogview`` in conftest) has the released layouts and the real text tokenizer, with a
×32 VQ-VAE so that a 256² image is 8×8 = 64 codes (``[TINY]``) and a whole run takes about a second.
"""

import dataclasses
import errno
import io
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from torchvision.utils import make_grid

import generate_samples
import vqvae
from arguments import get_args
from data_utils.unified_tokenizer import QueryError, UnifiedTokenizer
from generation import outputs
from generation.inputs import PROMPT, Query, file_slots, interactive_queries, read_query_file, split_fields
from generation.outputs import grid, incomplete_folder, publish_folder, slug, write_new
from generation.results import ResultsFile
from generation.runtime import build_model
from generation.scoring import inverse_prompt_score
from generation.tasks import TASKS, TaskContext
from tests.helpers.distributed import run_distributed
from tests.helpers.tiny_cogview import tiny_cogview_argv
from tests.test_scoring import hand_score as scoring_hand_score
from tools import make_tiny_cogview

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH = 2
SEED = 7
DEBUG_STAMP = re.compile(r"-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}(-\d+)?\.jpg$")

# generate_samples installs its tokenizer process-wide: each test gets it back afterwards.
pytestmark = pytest.mark.usefixtures("one_thread_per_module", "fresh_tokenizer_singleton")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three distinct noise images of odd sizes (one grayscale) in a folder."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (200, 320), dtype=np.uint8)).save(folder / "c.png")
    return folder


def cli_args(cogview: dict, *extra: str) -> list[str]:
    """Arguments of a run on the tiny model (CPU, batch 2 in forwards of 1, fixed seed)."""
    return tiny_cogview_argv(
        cogview, "--batch-size", str(BATCH), "--max-inference-batch-size", "1", "--seed", str(SEED), *extra
    )


@pytest.fixture(scope="module")
def ctx(tiny_cogview: dict) -> TaskContext:
    """A task context on the tiny model, built with generation.runtime like generate_samples does."""
    args = get_args(cli_args(tiny_cogview, "--top_k", "20"))
    tokenizer = UnifiedTokenizer(args.img_tokenizer_path, "cpu")
    model = build_model(args, tokenizer.num_tokens, torch.device("cpu"))
    return TaskContext(model, tokenizer, args)


def run_main(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    status = generate_samples.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    """The 'error: ...' lines of a run (progress bars share stderr)."""
    return [line[line.index("error: ") :] for line in stderr.splitlines() if "error: " in line]


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


# --- inputs and outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "with_id", "expected"),
    [
        ("一只猫\timg.png", False, (None, ["一只猫", "img.png"])),
        (" 一只猫 \t img.png \t\t", False, (None, ["一只猫", "img.png"])),
        ("cat-1\t一只猫\timg.png", True, ("cat-1", ["一只猫", "img.png"])),
        ("一只猫", False, "expected 2 TAB-separated fields (text, image path), got 1"),
        ("一只猫\ta\tb", False, "expected 2 TAB-separated fields (text, image path), got 3"),
        (" \timg.png", False, "field 1 (text) is empty"),
        ("../up\t一只猫\timg.png", True, "id '../up' is not a folder name"),
        ("a/b\t一只猫\timg.png", True, "id 'a/b' is not a folder name"),
        ("a\\b\t一只猫\timg.png", True, "is not a folder name"),
        ("..\t一只猫\timg.png", True, "is not a folder name"),
        ("only-id", True, "expected an id and 2 TAB-separated fields"),
    ],
)
def test_split_fields_checks_field_count_and_ids(line, with_id, expected):
    query = Query(3, line)
    if isinstance(expected, str):
        with pytest.raises(QueryError, match=re.escape(expected)):
            split_fields(query, ("text", "image path"), with_id=with_id)
    else:
        assert split_fields(query, ("text", "image path"), with_id=with_id) == expected


def test_split_fields_repeating_last_field():
    names = ("text", "image path")
    assert split_fields(Query(1, "t\ta\tb\tc"), names, repeat_last=True) == (None, ["t", "a", "b", "c"])
    with pytest.raises(
        QueryError, match=r"at least 2 TAB-separated fields \(text, image path, \.\.\.\), got 1"
    ):
        split_fields(Query(1, "t"), names, repeat_last=True)


def test_query_file_is_dealt_round_robin_with_line_numbers(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("a\n\nb\f\n   \nc\r\nd\n", encoding="utf-8")
    ranks = [read_query_file(path, rank, 2) for rank in range(2)]
    assert [total for _, total in ranks] == [6, 6]
    assert [(q.number, q.line) for q in ranks[0][0]] == [(1, "a"), (3, "b\f"), (5, "c")]
    assert [(q.number, q.line) for q in ranks[1][0]] == [(6, "d")]
    assert read_query_file(path)[0][1].where == "line 3"


def test_query_file_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"input file .*missing\.txt does not exist"):
        read_query_file(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text \(line 2\)"):
        read_query_file(tmp_path / "latin1.txt")


def test_interactive_queries_skip_empty_and_stop():
    typed = iter(["first", "  ", "second", "stop", "never"])
    prompts, messages = [], []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        return next(typed)

    queries = list(interactive_queries(read, messages.append))
    assert [(q.number, q.line, q.where) for q in queries] == [
        (1, "first", "query 1"),
        (2, "second", "query 2"),
    ]
    assert prompts == [PROMPT] * 4
    assert messages == ["Query should not be empty!"]
    endless_eof = iter(["only"])
    assert [q.line for q in interactive_queries(lambda _: next(endless_eof, None) or _raise_eof())] == [
        "only"
    ]


def _raise_eof() -> str:
    raise EOFError


def test_slug_is_the_original_stem_made_safe():
    assert slug("一只/猫在/踢足球" * 3) == ("一只猫在踢足球" * 3)[:20]
    assert slug("../..") == "query"
    assert slug("a\\b\x00c\n") == "abc"


def test_write_new_and_publish_folder_never_reuse_a_name(tmp_path):
    first = write_new(tmp_path, "x", ".txt", lambda path: path.write_text("1"))
    second = write_new(tmp_path, "x", ".txt", lambda path: path.write_text("2"))
    assert (first.name, second.name) == ("x.txt", "x-1.txt")
    assert (first.read_text(), second.read_text()) == ("1", "2")
    (tmp_path / "q-1").mkdir()  # an empty folder is taken too
    published = []
    for content in "abc":
        staging = incomplete_folder(tmp_path, "q")
        assert staging.name.startswith(".q.incomplete-")
        (staging / "0.jpg").write_text(content)
        published.append(publish_folder(staging, tmp_path, "q"))
    assert [folder.name for folder in published] == ["q", "q-2", "q-3"]
    assert [(folder / "0.jpg").read_text() for folder in published] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "q-1", "q-2", "q-3", "x-1.txt", "x.txt"]


def test_results_file_appends_in_input_order_and_never_replaces(tmp_path):
    results = ResultsFile(tmp_path, "scores.txt")
    results.record(2, None)  # waits for line 1
    assert results.path is None and list(tmp_path.iterdir()) == []
    results.record(1, "a\nstill a")
    assert results.path.read_text(encoding="utf-8") == "a still a\n\n"  # flushed, before any close
    results.record(4, "d")
    results.record(3, "c")
    results.record(3, "a model-parallel duplicate")
    results.close()
    assert results.path.read_text(encoding="utf-8") == "a still a\n\nc\nd\n"
    rerun = ResultsFile(tmp_path, "scores.txt")
    rerun.record(1, "new")
    rerun.close()
    assert rerun.path.name == "scores-1.txt" and results.path.read_text(encoding="utf-8").startswith("a")


def test_file_slots_give_every_process_the_same_number_of_rounds(tmp_path):
    path = tmp_path / "queries.txt"
    path.write_text("a\n\nb\nc\nd\n", encoding="utf-8")
    slots = []
    for rank in range(2):
        queries, num_lines = read_query_file(path, rank, 2)
        slots.append(file_slots(queries, num_lines, rank, 2))
    numbers = [[(slot[0], slot[1] and slot[1].line) if slot else None for slot in rank] for rank in slots]
    assert numbers == [[(1, "a"), (3, "b"), (5, "d")], [(2, None), (4, "c"), None]]


def test_long_ids_are_refused_before_any_work():
    with pytest.raises(
        QueryError, match=r"id 'iiiiiiiiiiiiiiiiiiii'\.\.\. is 300 bytes long: at most 200 fit"
    ):
        split_fields(Query(1, "i" * 300 + "\t一只猫"), ("text",), with_id=True)


def test_grid_clamps_instead_of_stretching_and_upsamples_small_images():
    big = torch.linspace(-0.5, 1.5, 3 * 8 * 8).view(1, 3, 8, 8)
    small = torch.full((1, 3, 4, 4), 0.25)
    result = grid([big, small])
    upsampled = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    expected = make_grid(torch.cat([big.clamp(0, 1), upsampled]), nrow=8, padding=2)
    assert torch.equal(result, expected)
    for count in (1, 8, 9, 17):  # one image (no padding), a full row, and rows left part-empty
        images = torch.rand(count, 3, 5, 7) * 1.4 - 0.2
        assert torch.equal(grid(list(images)), make_grid(images.clamp(0, 1), nrow=8, padding=2)), count


# --- tasks from Python ---------------------------------------------------------------------------


def test_post_selection_scores_each_image_in_input_order(ctx, images):
    paths = [images / name for name in ("a.png", "b.png", "c.png")]
    result = TASKS["post-selection"].run(ctx, ["一只猫在踢足球", *map(str, paths)])  # forwards of 1
    scores = [float(score) for score in result.line.split("\t")]
    tokenizer = ctx.tokenizer
    expected = []
    for path in paths:
        codes = tokenizer(tokenizer.read_img(path))[0].tolist()
        row = [tokenizer["[TINY]"], tokenizer["[BOI1]"], *codes, tokenizer["[EOI1]"], tokenizer["[ROI1]"]]
        row += tokenizer.EncodeAsIds("一只猫在踢足球")
        expected.append(inverse_prompt_score(ctx.model, [row], tokenizer).item())
    assert scores == pytest.approx(expected, abs=1e-4)
    assert len(set(scores)) == 3  # the images differ, so do their scores


def test_too_long_prompt_names_the_limit(ctx):
    with pytest.raises(QueryError, match=r"is 1\d\d tokens long, but the model takes at most 128"):
        TASKS["text2image"].run(ctx, ["一只猫" * 40])
    for task in ("text2image", "post-selection"):  # a huge [MASK]*N in a text field: refused, not allocated
        with pytest.raises(QueryError, match=r"is at least 10000000001 tokens long, but the model takes"):
            TASKS[task].run(ctx, ["一只猫 [MASK]*9999999999", "unused.png"][: 1 + (task != "text2image")])


# --- generate_samples.main ------------------------------------------------------------------------


def test_text2image_files_names_sizes_and_no_overwrite(tiny_cogview, tmp_path, capsys):
    queries = tmp_path / "input.txt"
    queries.write_text("一只猫\n\n一只/老虎\n一只猫\n" + "很长的句子" * 40 + "\n", encoding="utf-8")
    out = tmp_path / "samples"
    argv = cli_args(tiny_cogview, "--input-source", str(queries), "--output-path", str(out))
    status, stdout, stderr = run_main(capsys, argv)
    assert status == 1  # line 5 is too long
    (error,) = error_lines(stderr)
    assert re.fullmatch(
        r"error: line 5: the query is \d+ tokens long, but the model takes at most 128 "
        r"\(--max-position-embeddings, --max-position-embeddings-finetune\); shorten the text",
        error,
    )
    assert sorted(p.name for p in out.iterdir()) == ["一只猫", "一只猫-1", "一只老虎"]
    for folder in out.iterdir():
        assert sorted(p.name for p in folder.iterdir()) == ["0.jpg", "1.jpg", "concat.jpg"]
        assert image_size(folder / "0.jpg") == (256, 256)
        assert image_size(folder / "concat.jpg") == (2 + 2 * 258, 260)
        for name in ("0.jpg", "concat.jpg"):
            with Image.open(folder / name) as image:
                assert JpegImagePlugin.get_sampling(image) == 0, name  # full colour resolution (4:4:4)
    assert "line 1: done in" in stdout and "line 4: done in" in stdout
    first = {p.name: p.read_bytes() for p in (out / "一只猫").iterdir()}
    assert first["0.jpg"] != (out / "一只猫-1" / "0.jpg").read_bytes()  # seed + line number differ

    queries.write_text("一只猫\n", encoding="utf-8")
    assert run_main(capsys, argv)[0] == 0
    assert {p.name: p.read_bytes() for p in (out / "一只猫").iterdir()} == first  # untouched
    assert (out / "一只猫-2" / "0.jpg").read_bytes() == first["0.jpg"]  # same seed and line: same image


def test_debug_grids_and_with_id_folders(tiny_cogview, tmp_path, capsys):
    queries = tmp_path / "input.txt"
    queries.write_text(
        "cat\t一只猫\n../evil\t一只猫\nsub/dir\t一只猫\ncat\t一只猫\nlonely\n", encoding="utf-8"
    )
    out = tmp_path / "samples"
    argv = ["--input-source", str(queries), "--output-path", str(out), "--with-id"]
    status, _, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 1
    assert error_lines(stderr) == [
        "error: line 2: id '../evil' is not a folder name: it must be non-empty, without '..'",
        "error: line 3: id 'sub/dir' is not a folder name: it must not contain '/' or '\\'",
        "error: line 5: expected an id and 1 TAB-separated field (text), got 0",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "samples"]
    assert sorted(p.name for p in out.iterdir()) == ["cat", "cat-1"]
    assert sorted(p.name for p in (out / "cat").iterdir()) == ["0.jpg", "1.jpg", "concat.jpg"]

    debug_out = tmp_path / "debug"
    queries.write_text("一只猫\n一只猫\n", encoding="utf-8")
    argv = ["--input-source", str(queries), "--output-path", str(debug_out), "--debug"]
    status, stdout, _ = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 0
    grids = sorted(debug_out.iterdir())
    assert len(grids) == 2 and all(DEBUG_STAMP.search(p.name) and p.name.startswith("一只猫-") for p in grids)
    assert all(image_size(p) == (2 + 2 * 258, 260) for p in grids)
    assert stdout.count("[ROI1] 一只猫 [TINY] [BOI1]") == 2 * BATCH  # --debug prints the decoded text


def test_image2text_prints_and_writes_aligned_captions(tiny_cogview, images, tmp_path, capsys):
    queries = tmp_path / "input.txt"
    queries.write_text(
        f"{images / 'a.png'}\n\n{tmp_path / 'missing.png'}\n{images / 'c.png'}\n", encoding="utf-8"
    )
    out = tmp_path / "captions"
    argv = ["--generation-task", "image2text", "--input-source", str(queries), "--output-path", str(out)]
    status, stdout, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 1
    assert error_lines(stderr) == [f"error: line 3: Image file not found: {tmp_path / 'missing.png'}"]
    lines = (out / "captions.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[4] == ""
    assert lines[2] == f"error: Image file not found: {tmp_path / 'missing.png'}"
    for number, name in ((1, "a.png"), (4, "c.png")):
        captions = lines[number - 1].split("\t")
        assert len(captions) == BATCH
        for caption in captions:
            assert f"line {number}: {images / name}: {caption}\n" in stdout


def test_post_selection_scores_file_is_aligned_with_the_input(tiny_cogview, images, tmp_path, capsys, ctx):
    a, b, c = (images / name for name in ("a.png", "b.png", "c.png"))
    queries = tmp_path / "select.txt"
    lines = [f"一只猫\t{a}\t{b}", "", f"一只猫\t{a}\t{tmp_path / 'gone.png'}\t{c}", "一只猫", f"一只猫\t{c}"]
    queries.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "selection"
    argv = ["--generation-task", "post-selection", "--input-source", str(queries), "--output-path", str(out)]
    status, _, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 1
    lines = (out / "scores.txt").read_text(encoding="utf-8").split("\n")
    assert lines[1] == "" and lines[5] == "" and len(lines) == 6
    assert lines[2] == f"error: Image file not found: {tmp_path / 'gone.png'}"
    assert lines[3] == "error: expected at least 2 TAB-separated fields (text, image path, ...), got 1"
    first, last = [float(s) for s in lines[0].split("\t")], [float(s) for s in lines[4].split("\t")]
    assert first == pytest.approx([hand_score(ctx, path, "一只猫") for path in (a, b)], abs=1e-4)
    assert last == pytest.approx([hand_score(ctx, c, "一只猫")], abs=1e-4)
    assert error_lines(stderr) == [
        f"error: line 3: Image file not found: {tmp_path / 'gone.png'}",
        "error: line 4: expected at least 2 TAB-separated fields (text, image path, ...), got 1",
    ]


def hand_score(ctx: TaskContext, path: Path, text: str) -> float:
    """The post-selection score of one image, summed token by token from full-forward log-softmaxes."""
    tokenizer = ctx.tokenizer
    image_model = vqvae.load_vqvae(ctx.args.img_tokenizer_path)
    image = vqvae.img2code(image_model, vqvae.read_img(path, 256))[0].tolist()
    row = [tokenizer["[TINY]"], tokenizer["[BOI1]"], *image, tokenizer["[EOI1]"], tokenizer["[ROI1]"]]
    return scoring_hand_score(ctx.model, tokenizer, [*row, *tokenizer.EncodeAsIds(text)], len(row))


def test_super_resolution_doubles_the_image(tiny_cogview, images, tmp_path, capsys):
    queries = tmp_path / "input.txt"
    queries.write_text(f"一只猫\t{images / 'b.png'}\n", encoding="utf-8")
    argv = ["--generation-task", "super-resolution", "--input-source", str(queries)]
    out = tmp_path / "sr"
    assert run_main(capsys, cli_args(tiny_cogview, *argv, "--output-path", str(out)))[0] == 0
    assert sorted(p.name for p in (out / "一只猫").iterdir()) == [
        "0.jpg",
        "concat.jpg",
    ]  # one image per query
    assert image_size(out / "一只猫" / "0.jpg") == (512, 512)
    debug = tmp_path / "sr_debug"
    assert run_main(capsys, cli_args(tiny_cogview, *argv, "--output-path", str(debug), "--debug"))[0] == 0
    (grid_file,) = debug.iterdir()
    assert image_size(grid_file) == (2 + 2 * 514, 516)  # the input beside the result


def test_low_level_super_resolution_and_raw(tiny_cogview, images, tmp_path, capsys):
    queries = tmp_path / "input.txt"
    queries.write_text(f"一只猫\t{images / 'a.png'}\n", encoding="utf-8")
    out = tmp_path / "low"
    argv = ["--generation-task", "low-level super-resolution", "--input-source", str(queries)]
    assert run_main(capsys, cli_args(tiny_cogview, *argv, "--output-path", str(out), "--debug"))[0] == 0
    (grid_file,) = out.iterdir()
    assert image_size(grid_file) == (2 + 4 * 258, 260)  # input and result of both samples, at 256²

    queries.write_text(
        f"[ROI1] 一只猫 [TINY] [BOI1] [Image32]{images / 'a.png'}\n\n[ROI1] [MASK]*3\n", "utf-8"
    )
    out = tmp_path / "raw"
    argv = ["--generation-task", "raw", "--input-source", str(queries), "--output-path", str(out)]
    assert run_main(capsys, cli_args(tiny_cogview, *argv))[0] == 0
    lines = (out / "raw.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0].split("\t") == ["[ROI1] 一只猫 [TINY] [BOI1]"] * BATCH and lines[1] == ""
    assert all(text.startswith("[ROI1] ") and len(text) > 7 for text in lines[2].split("\t"))
    (folder,) = (p for p in out.iterdir() if p.is_dir())
    assert sorted(p.name for p in folder.iterdir()) == ["0.jpg", "1.jpg", "concat.jpg"]


def test_interactive_mode_survives_bad_queries_and_stops(tiny_cogview, images, tmp_path, capsys, monkeypatch):
    typed = f"{tmp_path / 'missing.png'}\n\n{images / 'b.png'}\nstop\n{images / 'c.png'}\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    out = tmp_path / "interactive"
    argv = ["--generation-task", "image2text", "--input-source", "interactive", "--output-path", str(out)]
    status, stdout, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 1
    assert stdout.count(PROMPT) == 4  # the fifth line comes after stop
    assert "Query should not be empty!" in stdout
    assert error_lines(stderr) == [f"error: query 1: Image file not found: {tmp_path / 'missing.png'}"]
    lines = (out / "captions.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 3 and lines[0].startswith("error: ") and len(lines[1].split("\t")) == BATCH

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{images / 'b.png'}\n"))  # ends without stop
    assert run_main(capsys, cli_args(tiny_cogview, *argv))[0] == 0


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            "--load",
            r"checkpoint directory .*nowhere does not exist: put the released CogView weights in "
            r"pretrained/cogview/cogview-\{base,sr,caption\}/",
        ),
        (
            "--img-tokenizer-path",
            r"VQ-VAE file .*nowhere does not exist: put the released VQ-VAE at "
            r"pretrained/vqvae/vqvae_hard_biggerset_011\.pt",
        ),
        ("--input-source", r"input file .*nowhere does not exist"),
    ],
)
def test_missing_files_stop_with_one_line_and_status_2(tiny_cogview, tmp_path, capsys, broken, message):
    queries = tmp_path / "input.txt"
    queries.write_text("一只猫\n", encoding="utf-8")
    argv = cli_args(tiny_cogview, "--input-source", str(queries), "--output-path", str(tmp_path / "out"))
    argv += [broken, str(tmp_path / "nowhere")]
    status, _, stderr = run_main(capsys, argv)
    assert status == 2
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert re.fullmatch(f"error: {message}.*", stderr.strip())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--temperature", "0"],
            "--temperature must be a positive number, got 0 (0 is not greedy decoding: pass --top_k 1 "
            "for that)",
        ),
        (["--temperature", "-1"], "--temperature must be a positive number, got -1"),
        (["--temperature", "nan"], "--temperature must be a positive number, got nan"),
        (["--top_k", "-5"], "--top_k must be 0 (off) or a positive number of tokens, got -5"),
        (["--top_p", "1.5"], "--top_p must be between 0 (off) and 1, got 1.5"),
        (
            ["--batch-size", "0"],
            "--batch-size (0) and --max-inference-batch-size (1) must both be at least 1.",
        ),
        (
            ["--max-inference-batch-size", "0"],
            "--batch-size (2) and --max-inference-batch-size (0) must both",
        ),
    ],
)
def test_bad_sampling_options_stop_at_start_up(tiny_cogview, tmp_path, capsys, options, message):
    queries = tmp_path / "input.txt"
    queries.write_text("一只猫\n", encoding="utf-8")
    argv = cli_args(tiny_cogview, "--input-source", str(queries), "--output-path", str(tmp_path / "out"))
    status, _, stderr = run_main(capsys, [*argv, *options])
    assert status == 2
    assert stderr.startswith(f"error: {message}") and stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("precision", "tolerance"), [((), 1e-3), (("--fp16",), 0.1), (("--bf16",), 0.3)])
def test_cuda_runs_match_the_cpu(tiny_cogview, images, tmp_path, capsys, precision, tolerance):
    select = tmp_path / "select.txt"
    select.write_text(f"一只猫\t{images / 'a.png'}\t{images / 'b.png'}\n", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("一只猫\n", encoding="utf-8")
    scores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        options = ("--device", device, *(precision if device == "cuda" else ()), "--output-path", str(out))
        argv = ["--generation-task", "post-selection", "--input-source", str(select), *options]
        assert run_main(capsys, cli_args(tiny_cogview, *argv))[0] == 0
        scores[device] = [float(s) for s in (out / "scores.txt").read_text().split()]
        assert run_main(capsys, cli_args(tiny_cogview, "--input-source", str(prompts), *options))[0] == 0
        assert image_size(out / "一只猫" / "0.jpg") == (256, 256)
    assert scores["cuda"] == pytest.approx(scores["cpu"], abs=tolerance)


def _main_on_rank(rank: int, world_size: int, runs: list[list[str]]) -> list[int]:
    return [generate_samples.main(argv) for argv in runs]


@pytest.mark.slow
def test_two_processes_share_a_file_and_match_one_process(tiny_cogview, images, tmp_path, capsys):
    """Lines are dealt round-robin, images match a one-process run (seed + line), scores are gathered."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("一只猫\n一只狗\n\n一只老虎\n", encoding="utf-8")
    select = tmp_path / "select.txt"
    a, b, c = (images / name for name in ("a.png", "b.png", "c.png"))
    select.write_text(
        f"猫\t{a}\t{b}\n狗\t{c}\n\n虎\t{b}\t{tmp_path / 'gone.png'}\n鸟\t{c}\t{a}\n", encoding="utf-8"
    )

    def runs(out: Path) -> list[list[str]]:
        return [
            cli_args(tiny_cogview, "--input-source", str(prompts), "--output-path", str(out / "t2i")),
            cli_args(
                tiny_cogview,
                *("--generation-task", "post-selection", "--input-source", str(select)),
                *("--output-path", str(out / "select")),
            ),
        ]

    assert [run_main(capsys, argv)[0] for argv in runs(tmp_path / "one")] == [0, 1]
    assert run_distributed(_main_on_rank, 2, runs(tmp_path / "two")) == [[0, 0], [0, 1]]  # line 4: rank 1
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "select" / "scores.txt").read_text() == (one / "select" / "scores.txt").read_text()
    files = sorted(p.relative_to(one / "t2i") for p in (one / "t2i").rglob("*.jpg"))
    assert files == sorted(p.relative_to(two / "t2i") for p in (two / "t2i").rglob("*.jpg"))
    assert len(files) == 3 * (BATCH + 1)
    assert all((one / "t2i" / f).read_bytes() == (two / "t2i" / f).read_bytes() for f in files)


# --- nothing lost, nothing crashes ---------------------------------------------------------------


def _ctrl_c_during(monkeypatch: pytest.MonkeyPatch, task_name: str, when) -> None:
    """Make ``task_name`` send this process a real SIGINT (Ctrl-C) as the queries ``when(fields)`` start."""
    task = TASKS[task_name]

    def run(ctx: TaskContext, fields: list[str]):
        if when(fields):
            os.kill(os.getpid(), signal.SIGINT)
        return task.run(ctx, fields)

    monkeypatch.setitem(TASKS, task_name, dataclasses.replace(task, run=run))


def test_results_are_appended_as_queries_finish_and_survive_ctrl_c(
    tiny_cogview, images, tmp_path, capsys, monkeypatch
):
    queries = tmp_path / "input.txt"
    queries.write_text(f"{images / 'a.png'}\n\n{images / 'b.png'}\n{images / 'c.png'}\n", encoding="utf-8")
    out = tmp_path / "captions"
    argv = ["--generation-task", "image2text", "--input-source", str(queries), "--output-path", str(out)]
    seen_during_line_4 = []

    def at_line_4(fields: list[str]) -> bool:
        if fields[0].endswith("c.png"):
            seen_during_line_4.append((out / "captions.txt").read_text(encoding="utf-8"))
            return True
        return False

    with monkeypatch.context() as patch:
        _ctrl_c_during(patch, "image2text", at_line_4)
        status, _, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted during line 4: 2 of 3 queries finished; their results are in {out / 'captions.txt'}"
    )
    kept = (out / "captions.txt").read_text(encoding="utf-8")
    assert seen_during_line_4 == [kept]  # lines 1-3 were on disk before line 4 started
    lines = kept.split("\n")
    assert len(lines) == 4 and lines[1] == lines[3] == ""
    assert len(lines[0].split("\t")) == len(lines[2].split("\t")) == BATCH

    assert run_main(capsys, cli_args(tiny_cogview, *argv))[0] == 0  # a rerun: a new file, the old one kept
    assert (out / "captions.txt").read_text(encoding="utf-8") == kept
    rerun = (out / "captions-1.txt").read_text(encoding="utf-8").split("\n")
    assert rerun[:3] == lines[:3] and len(rerun) == 5  # same seeds, and now line 4 too


def test_ctrl_c_while_saving_leaves_no_partial_folder(tiny_cogview, tmp_path, capsys, monkeypatch):
    queries = tmp_path / "input.txt"
    queries.write_text("cat\t一只猫\ndog\t一只狗\n", encoding="utf-8")
    out = tmp_path / "samples"
    real_save = outputs.save_image

    def ctrl_c_on_the_second_image_of_dog(image, path):
        if path.parent.name.startswith(".dog.incomplete-") and path.name == "1.jpg":
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(image, path)

    monkeypatch.setattr(outputs, "save_image", ctrl_c_on_the_second_image_of_dog)
    argv = ["--input-source", str(queries), "--output-path", str(out), "--with-id"]
    status, _, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted during line 2: 1 of 2 queries finished"
    assert sorted(p.name for p in out.iterdir()) == ["cat"]  # no half-written dog folder, visible or not
    assert sorted(p.name for p in (out / "cat").iterdir()) == ["0.jpg", "1.jpg", "concat.jpg"]


def test_ctrl_c_at_the_interactive_prompt_is_one_line(tiny_cogview, images, tmp_path, capsys, monkeypatch):
    class CtrlCAfterOneQuery(io.StringIO):
        def readline(self, *args) -> str:
            line = super().readline(*args)
            if not line:
                raise KeyboardInterrupt
            return line

    monkeypatch.setattr(sys, "stdin", CtrlCAfterOneQuery(f"{images / 'b.png'}\n"))
    out = tmp_path / "interactive"
    argv = ["--generation-task", "image2text", "--input-source", "interactive", "--output-path", str(out)]
    status, stdout, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 130 and "Traceback" not in stderr
    assert stdout.endswith(f"{PROMPT}\nresults: {out / 'captions.txt'}\n")
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: 1 query finished; their results are in {out / 'captions.txt'}"
    )
    assert len((out / "captions.txt").read_text(encoding="utf-8").split("\n")[0].split("\t")) == BATCH


def test_ctrl_c_while_the_model_loads_is_one_line(tiny_cogview, tmp_path, capsys, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_samples, "build_model", ctrl_c)
    queries = tmp_path / "input.txt"
    queries.write_text("一只猫\n", encoding="utf-8")
    argv = cli_args(tiny_cogview, "--input-source", str(queries), "--output-path", str(tmp_path / "out"))
    status, _, stderr = run_main(capsys, argv)
    assert (status, stderr) == (130, "interrupted before the first query; nothing was generated\n")


def _not_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded before the output folder was checked")


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (lambda tmp: tmp / "input.txt", r"--output-path (.*input\.txt) is not a folder: \1 is a file$"),
        (
            lambda tmp: tmp / "input.txt" / "out",
            r"--output-path .*out is not a folder: .*input\.txt is a file$",
        ),
        (lambda tmp: Path("/sys/cogview-samples"), r"cannot write in --output-path /sys/cogview-samples: "),
    ],
    ids=["a file", "under a file", "not writable"],
)
def test_output_folder_is_checked_before_the_model_loads(
    tiny_cogview, tmp_path, capsys, monkeypatch, output, message
):
    if str(output(tmp_path)).startswith("/sys") and not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux's /sys, which nobody may create folders in")
    queries = tmp_path / "input.txt"
    queries.write_text("一只猫\n", encoding="utf-8")
    monkeypatch.setattr(generate_samples, "build_model", _not_loaded)
    argv = cli_args(tiny_cogview, "--input-source", str(queries), "--output-path", str(output(tmp_path)))
    status, _, stderr = run_main(capsys, argv)
    assert status == 2 and stderr.count("\n") == 1
    assert re.match(f"error: {message}", stderr.strip()), stderr


def test_a_query_whose_outputs_cannot_be_saved_fails_alone(tiny_cogview, tmp_path, capsys, monkeypatch):
    queries = tmp_path / "input.txt"
    long_id = "i" * 300
    queries.write_text(f"{long_id}\t一只猫\nfull\t一只猫\nok\t一只狗\n", encoding="utf-8")
    out = tmp_path / "samples"
    real_save = outputs.save_image

    def disk_full_for_query_full(image, path):
        if path.parent.name.startswith(".full.incomplete-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(image, path)

    monkeypatch.setattr(outputs, "save_image", disk_full_for_query_full)
    argv = ["--input-source", str(queries), "--output-path", str(out), "--with-id"]
    status, stdout, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 1
    assert error_lines(stderr) == [
        "error: line 1: id 'iiiiiiiiiiiiiiiiiiii'... is 300 bytes long: at most 200 fit in a folder name",
        "error: line 2: cannot save its images: [Errno 28] No space left on device",
    ]
    assert "line 3: done in" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["ok"]  # nothing half-written from line 2


def test_a_mask_longer_than_the_model_is_one_failed_query(tiny_cogview, tmp_path, capsys):
    queries = tmp_path / "raw.txt"
    queries.write_text("[ROI1] 一只猫 [MASK]*9999999999\n[ROI1] [MASK]*3\n", encoding="utf-8")
    out = tmp_path / "raw"
    argv = ["--generation-task", "raw", "--input-source", str(queries), "--output-path", str(out)]
    status, _, stderr = run_main(capsys, cli_args(tiny_cogview, *argv))
    assert status == 1
    (error,) = error_lines(stderr)
    assert re.fullmatch(
        r"error: line 1: the query is at least 100000000\d\d tokens long, but the model .*", error
    )
    lines = (out / "raw.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("error: the query is at least") and lines[1].startswith("[ROI1] ")


def test_the_tiny_model_tool_runs_the_readme_commands(tmp_path, capsys):
    assert make_tiny_cogview.main([str(tmp_path / "tiny")]) == 0
    assert make_tiny_cogview.main([str(tmp_path / "tiny")]) == 1  # never written over
    assert "tiny already exists and is not empty" in capsys.readouterr().err
    queries = tmp_path / "input.txt"
    queries.write_text("一只猫\n", encoding="utf-8")
    argv = shlex.split((tmp_path / "tiny" / "args.txt").read_text(encoding="utf-8"))
    argv += ["--input-source", str(queries), "--device", "cpu", "--output-path", str(tmp_path / "samples")]
    assert run_main(capsys, [*argv, "--batch-size", "1"])[0] == 0
    assert sorted(p.name for p in (tmp_path / "samples" / "一只猫").iterdir()) == ["0.jpg", "concat.jpg"]


# --- the launcher scripts ------------------------------------------------------------------------


def run_script(script: str, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_text2image_script_runs_on_the_cpu_with_overrides(tiny_cogview, tmp_path):
    (tmp_path / "input.txt").write_text("一只猫\n一只狗\n", encoding="utf-8")
    env = {
        "CHECKPOINT_PATH": str(tiny_cogview["checkpoint"]),
        "IMG_TOKENIZER_PATH": str(tiny_cogview["vqvae"]),
        "DEVICE": "cpu",
    }
    done = run_script("text2image.sh", tmp_path, env, *tiny_cogview["args"], "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "samples_text2image"
    assert sorted(p.name for p in out.iterdir()) == ["一只狗", "一只猫"]
    assert sorted(p.name for p in (out / "一只狗").iterdir()) == ["0.jpg", "1.jpg", "concat.jpg"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "where"),
    [
        ("text2image.sh", "cogview-base"),
        ("super_resolution.sh", "cogview-sr"),
        ("low_level_super_resolution.sh", "cogview-sr"),
        ("image2text.sh", "cogview-caption"),
        ("post_selection.sh", "cogview-caption"),
    ],
)
def test_scripts_without_released_weights_say_where_they_go(tmp_path, script, where):
    pretrained = tmp_path / "pretrained"  # neither released nor bundled models (PRETRAINED_DIR)
    done = run_script(script, tmp_path, {"DEVICE": "cpu", "PRETRAINED_DIR": str(pretrained)})
    assert done.returncode == 2
    assert f"{pretrained}/cogview/{where} does not exist: put the released CogView weights" in done.stderr
    assert "Traceback" not in done.stderr
