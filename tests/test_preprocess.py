"""The preprocessing tool: rows equal an independent tokenisation, resume is exact, bad input is reported."""

import argparse
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import lmdb
import numpy as np
import pytest
import sentencepiece as spm
import torch

import preprocess_entry
import vqvae
from data_utils.dataset_writers import LMDBWriter
from data_utils.datasets import DatasetNotFoundError, get_dataset_by_type, load_row, open_lmdb
from data_utils.unified_tokenizer import UnifiedTokenizer
from preprocess import CaptionFileError, PreprocessConfig, Preprocessor
from preprocess.pipeline import SettingsMismatchError
from tests.conftest import REPO_ROOT

# Command ids for the tiny layout: 64 image codes, then 50000 text ids, then the commands.
CMD = 64 + 50000
PAD, BOI1, BOI2, EOI1, ROI1, ROI2, TINY, SMALL, POS0 = (
    CMD,
    CMD + 1,
    CMD + 2,
    CMD + 4,
    CMD + 7,
    CMD + 8,
    CMD + 14,
    CMD + 15,
    CMD + 18,
)


class Reference:
    """Tokenises samples independently of the tool: SentencePiece directly, VQ-VAE via vqvae.read_img."""

    def __init__(self, sp: spm.SentencePieceProcessor, model: vqvae.VQVAE):
        self.sp, self.model = sp, model

    def text(self, caption: str) -> list[int]:
        return [i + 64 for i in self.sp.EncodeAsIds(caption)]

    def codes(self, path: Path, size: int) -> list[int]:
        return vqvae.img2code(self.model, vqvae.read_img(path, size))[0].tolist()


@pytest.fixture(scope="module")
def reference(real_sp: spm.SentencePieceProcessor, tiny_vqvae: vqvae.VQVAE) -> Reference:
    return Reference(real_sp, tiny_vqvae)


@pytest.fixture
def shapes(tmp_path: Path, make_shape_images) -> tuple[Path, list[tuple[str, str]]]:
    """11 shape images plus a corrupt and a missing one, listed in captions.tsv → (tsv, good pairs)."""
    folder = tmp_path / "images"
    pairs = make_shape_images(folder, 11)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines = [f"{name}\t{caption}" for name, caption in pairs]
    lines.insert(2, "broken.png\ta broken image")
    lines.insert(7, "gone.png\ta missing image")
    (folder / "captions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "captions.tsv", pairs


def config(tsv: Path, out: Path, vqvae_path: Path, **overrides) -> PreprocessConfig:
    settings = {
        "captions": tsv,
        "output": out,
        "img_tokenizer_path": vqvae_path,
        "encode_size": 8,
        "batch_size": 4,
    }
    settings.update(overrides)
    return PreprocessConfig(**settings, device="cpu")


def lmdb_items(path: Path) -> dict[bytes, bytes]:
    with open_lmdb(path).begin() as txn:
        return dict(txn.cursor())


def dataset_args(length: int) -> argparse.Namespace:
    return argparse.Namespace(
        max_position_embeddings=length, finetune=False, max_position_embeddings_finetune=-1
    )


def test_text2image_rows_match_independent_tokenisation(
    shapes, tmp_path: Path, tiny_vqvae_path: Path, tiny_tokenizer: UnifiedTokenizer, reference: Reference
) -> None:
    tsv, pairs = shapes
    out = tmp_path / "t2i.lmdb"
    summary = Preprocessor(config(tsv, out, tiny_vqvae_path)).run()
    assert (summary.rows, summary.images, summary.skipped) == (11, 11, 2)
    dataset = get_dataset_by_type("TokenizedDataset", out, dataset_args(96), tiny_tokenizer)
    assert len(dataset) == 11
    for i, (name, caption) in enumerate(pairs):
        row = [ROI1, *reference.text(caption), TINY, BOI1, *reference.codes(tsv.parent / name, 64), EOI1]
        sample = dataset[i]
        assert sample["text"].tolist() == row + [PAD] * (96 - len(row))
        assert sample["loss_mask"].tolist() == [1] * len(row) + [0] * (96 - len(row))
    report = (tmp_path / "t2i.lmdb.skipped.tsv").read_text(encoding="utf-8").splitlines()
    assert report[0] == "origin\timage\treason"
    assert report[1].startswith(f"{tsv}:3\tbroken.png\tImageReadError: ") or report[1].startswith(
        f"{tsv}:3\tbroken.png\tUnidentifiedImageError: "
    )
    assert report[2] == f"{tsv}:8\tgone.png\tFileNotFoundError: no such file {tsv.parent / 'gone.png'}"
    assert summary.report == tmp_path / "t2i.lmdb.skipped.tsv"


def test_image2text_rows_and_caption_truncation(
    shapes, tmp_path: Path, tiny_vqvae_path: Path, reference: Reference
) -> None:
    tsv, pairs = shapes
    out = tmp_path / "i2t.lmdb"
    summary = Preprocessor(
        config(tsv, out, tiny_vqvae_path, layout="image2text", max_seq_len=4 + 64 + 5)
    ).run()
    items = lmdb_items(out)
    assert set(items) == {str(i).encode() for i in range(11)} | {b"length"} and items[b"length"] == b"11"
    assert summary.truncated_captions == sum(len(reference.text(c)) > 5 for _, c in pairs) > 0
    for key, (name, caption) in enumerate(pairs):
        expected = [
            TINY,
            BOI1,
            *reference.codes(tsv.parent / name, 64),
            EOI1,
            ROI1,
            *reference.text(caption)[:5],
        ]
        assert load_row(items[str(key).encode()]).tolist() == expected


def test_super_resolution_windows(
    shapes, tmp_path: Path, tiny_vqvae_path: Path, reference: Reference
) -> None:
    tsv, pairs = shapes
    out = tmp_path / "sr.lmdb"
    summary = Preprocessor(config(tsv, out, tiny_vqvae_path, layout="super-resolution")).run()
    assert summary.rows == 9 * 11
    items = lmdb_items(out)
    for image_index in (0, 6):
        name, caption = pairs[image_index]
        low = np.array(reference.codes(tsv.parent / name, 64)).reshape(8, 8)
        high = np.array(reference.codes(tsv.parent / name, 128)).reshape(16, 16)
        text = reference.text(caption)
        for window, (i, j) in enumerate(
            [(0, 0), (0, 1), (0, 2), (1, 1), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
        ):
            crop = low[2 * i : 2 * i + 4, 2 * j : 2 * j + 4].reshape(-1).tolist()
            block = high[4 * i : 4 * i + 8, 4 * j : 4 * j + 8].reshape(-1).tolist()
            # both size tokens name the 8×8 low-resolution grid, as the generation query does
            expected = [ROI1, *text, TINY, BOI1, *crop, EOI1, ROI2, POS0, TINY, BOI2, *block]
            assert load_row(items[str(9 * image_index + window).encode()]).tolist() == expected


def test_compact_binary_output_equals_lmdb_rows(
    tmp_path: Path, make_shape_images, tiny_vqvae_path: Path
) -> None:
    pairs = make_shape_images(tmp_path / "big", 3, size=256)
    tsv = tmp_path / "big" / "captions.jsonl"
    tsv.write_text("".join(json.dumps({"image": n, "caption": c}) + "\n" for n, c in pairs), encoding="utf-8")
    Preprocessor(config(tsv, tmp_path / "d.bin", tiny_vqvae_path, encode_size=32)).run()
    Preprocessor(config(tsv, tmp_path / "d.lmdb", tiny_vqvae_path, encode_size=32)).run()
    tokenizer = UnifiedTokenizer(tiny_vqvae_path, "cpu")
    from_bin = get_dataset_by_type("CompactBinaryDataset", tmp_path / "d.bin", dataset_args(1089), tokenizer)
    from_lmdb = get_dataset_by_type("TokenizedDataset", tmp_path / "d.lmdb", dataset_args(1089), tokenizer)
    assert len(from_bin) == len(from_lmdb) == 3
    for i in range(3):
        assert from_bin[i]["text"].tolist() == from_lmdb[i]["text"].tolist()
        assert from_bin[i]["loss_mask"].tolist() == from_lmdb[i]["loss_mask"].tolist()
    with pytest.raises(ValueError, match=r"A \.bin output holds the compact text2image format"):
        Preprocessor(config(tsv, tmp_path / "x.bin", tiny_vqvae_path, layout="image2text", encode_size=32))


class Interrupt(Exception):
    pass


def interrupt_after(commits: int):
    seen = []

    def on_commit(consumed: int) -> None:
        seen.append(consumed)
        if len(seen) == commits:
            raise Interrupt

    return on_commit


@pytest.mark.parametrize("suffix", [".lmdb", ".bin"])
def test_interrupted_run_resumes_exactly(shapes, tmp_path: Path, tiny_vqvae_path: Path, suffix: str) -> None:
    tsv, _ = shapes
    encode = {"encode_size": 32} if suffix == ".bin" else {}
    if suffix == ".bin":  # the compact format needs 256 px images for 32×32 codes
        tsv = tmp_path / "images" / "big.tsv"
        lines = (tmp_path / "images" / "captions.tsv").read_text().splitlines()[:7]
        tsv.write_text("\n".join(lines) + "\n")
    fresh = tmp_path / f"fresh{suffix}"
    expected = Preprocessor(config(tsv, fresh, tiny_vqvae_path, batch_size=2, **encode)).run()
    out = tmp_path / f"resumed{suffix}"
    with pytest.raises(Interrupt):
        Preprocessor(config(tsv, out, tiny_vqvae_path, batch_size=2, **encode)).run(
            on_commit=interrupt_after(2)
        )
    assert not out.exists() and (tmp_path / f"resumed{suffix}.partial").exists()
    if suffix == ".lmdb":
        with pytest.raises(DatasetNotFoundError, match="preprocessing into it has not finished"):
            get_dataset_by_type("TokenizedDataset", out, dataset_args(96), UnifiedTokenizer(None, "cpu", 64))
    else:  # a torn commit: half a row and half a report line written when the process died
        with open(f"{out}.partial", "ab") as data, open(f"{out}.partial.log", "ab") as log:
            data.write(b"\7" * 1001)
            log.write(b"half")
    commits = []
    summary = Preprocessor(config(tsv, out, tiny_vqvae_path, batch_size=2, **encode)).run(
        on_commit=commits.append
    )
    assert commits[0] == 6  # the first two batches of 2 records were not redone
    if suffix == ".lmdb":
        assert lmdb_items(out) == lmdb_items(fresh)
    else:
        assert out.read_bytes() == fresh.read_bytes()
    assert Path(f"{out}.skipped.tsv").read_text() == Path(f"{fresh}.skipped.tsv").read_text()
    assert (summary.rows, summary.skipped) == (expected.rows, expected.skipped)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("resumed")) == [
        f"resumed{suffix}",
        f"resumed{suffix}.skipped.tsv",
    ]


def test_resume_refuses_changed_settings(shapes, tmp_path: Path, tiny_vqvae_path: Path) -> None:
    tsv, _ = shapes
    out = tmp_path / "o.lmdb"
    with pytest.raises(Interrupt):
        Preprocessor(config(tsv, out, tiny_vqvae_path)).run(on_commit=interrupt_after(1))
    with pytest.raises(
        SettingsMismatchError, match=r"o\.lmdb\.partial was started with different layout; rerun with"
    ):
        Preprocessor(config(tsv, out, tiny_vqvae_path, layout="image2text")).run()
    summary = Preprocessor(config(tsv, out, tiny_vqvae_path, layout="image2text", overwrite=True)).run()
    assert summary.rows == 11 and load_row(lmdb_items(out)[b"0"])[0] == TINY


def test_workers_give_identical_output(shapes, tmp_path: Path, tiny_vqvae_path: Path) -> None:
    tsv, _ = shapes
    Preprocessor(config(tsv, tmp_path / "a.lmdb", tiny_vqvae_path, num_workers=0, batch_size=3)).run()
    Preprocessor(config(tsv, tmp_path / "b.lmdb", tiny_vqvae_path, num_workers=2, batch_size=5)).run()
    assert lmdb_items(tmp_path / "a.lmdb") == lmdb_items(tmp_path / "b.lmdb")


def test_zip_input(tmp_path: Path, make_shape_images, tiny_vqvae_path: Path, reference: Reference) -> None:
    pairs = make_shape_images(tmp_path / "src", 3)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, _ in reversed(pairs):
            zf.write(tmp_path / "src" / name, f"pics/{name.replace('shape', 'a cat')}")
        zf.writestr("pics/corrupt.jpg", b"nope")
        zf.writestr("__MACOSX/pics/._x.png", b"metadata")
        zf.writestr("notes.txt", b"not an image")
    summary = Preprocessor(config(None, tmp_path / "z.lmdb", tiny_vqvae_path, zip_path=archive)).run()
    assert (summary.rows, summary.skipped) == (3, 1)
    items = lmdb_items(tmp_path / "z.lmdb")
    for i, (name, _) in enumerate(pairs):  # sorted member order; caption = file stem
        stem = Path(name.replace("shape", "a cat")).stem
        codes = reference.codes(tmp_path / "src" / name, 64)
        assert load_row(items[str(i).encode()]).tolist() == [
            ROI1,
            *reference.text(stem),
            TINY,
            BOI1,
            *codes,
            EOI1,
        ]
    report = (tmp_path / "z.lmdb.skipped.tsv").read_text().splitlines()
    assert len(report) == 2 and report[1].startswith(f"{archive}\tpics/corrupt.jpg\t")
    sidecar = tmp_path / "captions.jsonl"
    sidecar.write_text(
        json.dumps({"image": f"pics/{pairs[1][0].replace('shape', 'a cat')}", "caption": "一只猫"})
    )
    summary = Preprocessor(config(sidecar, tmp_path / "s.lmdb", tiny_vqvae_path, zip_path=archive)).run()
    row = load_row(lmdb_items(tmp_path / "s.lmdb")[b"0"]).tolist()
    assert summary.rows == 1 and row[: 1 + len(reference.text("一只猫"))] == [ROI1, *reference.text("一只猫")]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (
            "a.png\tok\nb.png no tab\n",
            ".tsv",
            r"captions.tsv:2: expected 'path<TAB>caption' but the line has no TAB",
        ),
        ("a.png\t   \n", ".tsv", r"captions.tsv:1: the caption is empty"),
        (
            '{"image": "a.png", "caption": "x"}\n\n{"image": "b.png"\n',
            ".jsonl",
            r"captions.jsonl:3: invalid JSON",
        ),
        (
            '{"image": "a.png", "text": "x"}\n',
            ".jsonl",
            r"captions.jsonl:1: 'caption' is missing or not a string",
        ),
        (b"a.png\t\xff\xfe\n", ".tsv", r"captions.tsv:1: the line is not valid UTF-8"),
    ],
)
def test_bad_caption_lines(tmp_path: Path, tiny_vqvae_path: Path, content, suffix: str, message: str) -> None:
    path = tmp_path / f"captions{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(CaptionFileError, match=message):
        Preprocessor(config(path, tmp_path / "o.lmdb", tiny_vqvae_path))


def test_cli_end_to_end_and_errors(shapes, tmp_path: Path, tiny_vqvae_path: Path, capsys) -> None:
    tsv, _ = shapes
    out = tmp_path / "cli.lmdb"
    argv = ["--captions", str(tsv), "--img_tokenizer_path", str(tiny_vqvae_path), "--encode_size", "8"]
    argv += ["--output", str(out), "--device", "cpu", "--num-workers", "0"]
    assert preprocess_entry.main(argv) == 0
    assert f"Wrote 11 rows from 11 images to {out}" in capsys.readouterr().out
    assert preprocess_entry.main(argv) == 2
    assert capsys.readouterr().err == (
        f"preprocess_entry.py: error: {out} already exists; delete it or choose another output path.\n"
    )
    bad_model = ["--img-tokenizer-path", str(tmp_path / "none.pt")]
    assert preprocess_entry.main([*argv[:2], *bad_model, "--output", str(tmp_path / "x.lmdb")]) == 2
    assert "VQ-VAE checkpoint not found" in capsys.readouterr().err
    assert preprocess_entry.main([*argv, "--overwrite", "--encode-size", "5"]) == 2
    assert "needs [8, 16, 32, 64] codes per side" in capsys.readouterr().err


def test_busy_output_is_one_line_and_overwrite_leaves_the_other_writer_alone(
    shapes, tmp_path: Path, tiny_vqvae_path: Path, capsys
) -> None:
    tsv, _ = shapes
    out = tmp_path / "busy.lmdb"
    argv = ["--captions", str(tsv), "--img-tokenizer-path", str(tiny_vqvae_path), "--encode-size", "8"]
    argv += ["--output", str(out), "--device", "cpu", "--num-workers", "0"]
    other = LMDBWriter(out)  # another process's writer, part-way through
    other.commit([np.arange(3)], state={"settings": {}})
    try:
        for extra in ([], ["--overwrite"]):
            assert preprocess_entry.main([*argv, *extra]) == 2
            assert capsys.readouterr().err == (
                f"preprocess_entry.py: error: Another process is writing {out} "
                f"(it holds {out}.partial.lock); wait for it to finish or stop it "
                "(a rerun then resumes its work).\n"
            )
        assert (tmp_path / "busy.lmdb.partial" / "data.mdb").is_file()  # --overwrite deleted nothing
    finally:
        other.close()


@pytest.mark.slow
def test_kill_9_midway_then_rerun(tmp_path: Path, make_shape_images, tiny_vqvae_path: Path) -> None:
    pairs = make_shape_images(tmp_path / "images", 60)
    tsv = tmp_path / "images" / "captions.tsv"
    tsv.write_text("".join(f"{n}\t{c}\n" for n, c in pairs), encoding="utf-8")
    Preprocessor(config(tsv, tmp_path / "fresh.lmdb", tiny_vqvae_path, batch_size=2)).run()
    out = tmp_path / "killed.lmdb"
    arguments = ["--captions", str(tsv), "--output", str(out), "--img-tokenizer-path", str(tiny_vqvae_path)]
    arguments += ["--encode-size", "8", "--batch-size", "2", "--device", "cpu", "--num-workers", "0"]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    killer = [sys.executable, "-m", "tests.helpers.kill_after_commits", "20", *arguments]
    killed = subprocess.run(killer, capture_output=True, text=True, cwd=tmp_path, env=environment)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert partial_rows(Path(f"{out}.partial")) == 20  # killed right after the 10th commit of 2 rows
    command = [sys.executable, str(REPO_ROOT / "preprocess_entry.py"), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "Wrote 60 rows from 60 images" in done.stdout
    assert "| 20/60 " in done.stderr and "| 0/60 " not in done.stderr  # resumed, not started over
    assert lmdb_items(out) == lmdb_items(tmp_path / "fresh.lmdb")


def partial_rows(partial: Path) -> int:
    """Rows committed so far in a partial LMDB another process is writing (0 before it exists)."""
    if not (partial / "data.mdb").exists():
        return 0
    with lmdb.open(str(partial), readonly=True, lock=False) as env, env.begin() as txn:
        state = txn.get(b"__writer_state__")
    return json.loads(state)["rows"] if state else 0


def test_codes_follow_the_vqvae_factor(tmp_path: Path, make_shape_images) -> None:
    torch.manual_seed(1)
    path = tmp_path / "x4.pt"
    vqvae.save_vqvae(vqvae.VQVAE(channel=8, embed_dim=4, n_embed=32, stride=4), path)
    pairs = make_shape_images(tmp_path / "img", 2)
    tsv = tmp_path / "img" / "c.tsv"
    tsv.write_text("".join(f"{n}\t{c}\n" for n, c in pairs))
    preprocessor = Preprocessor(config(tsv, tmp_path / "o.lmdb", path, encode_size=16))
    assert preprocessor.image_size == 64  # 16 codes × 4 px per code
    preprocessor.run()
    row = load_row(lmdb_items(tmp_path / "o.lmdb")[b"0"])
    assert row[-259:-257].tolist() == [32 + 50000 + 15, 32 + 50000 + 1]  # [SMALL] [BOI1], 256 codes, [EOI1]
