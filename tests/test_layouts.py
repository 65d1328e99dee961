"""Training rows and inference queries share one layout: the same ids through preprocessing and generation.

Each layout is built twice for 8×8, 16×16 and 32×32 code grids: once by the preprocessing tool (image and
caption files → LMDB rows) and once by the generation tasks (query fields → the ids handed to the
sampler, recorded instead of sampled). Only the positions generation must fill may differ.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import generation.scoring
from common.errors import InputError
from data_utils import layouts
from data_utils.datasets import load_row, open_lmdb
from data_utils.layouts import MASK
from generation.tasks import TASKS, TaskContext
from generation.tasks.image2text import CAPTION_LENGTH
from preprocess import PreprocessConfig, Preprocessor
from tests.conftest import shape_image

GRIDS = (8, 16, 32)
FACTOR = 8  # the tiny VQ-VAE's down-sampling


@dataclass
class RecordingContext(TaskContext):
    """A task context whose sampler records the ids it is given and fills the masks from ``truth``."""

    truth: list[int] = field(default_factory=list)
    seen: list[list[int]] = field(default_factory=list)

    def fill(self, ids, batch_size=None, unconditional=None):
        assert batch_size is None and unconditional is None  # the quality levers are off here
        self.check_length(len(ids))
        self.seen.append(list(ids))
        return torch.tensor([[t if i == MASK else i for i, t in zip(ids, self.truth, strict=True)]])


def context(tokenizer, side: int) -> RecordingContext:
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 0.0, "batch_size": 1, "max_inference_batch_size": 12}
    args = SimpleNamespace(
        max_position_embeddings=4096,
        max_position_embeddings_finetune=-1,
        debug=False,
        make_vocab_size_divisible_by=128,
        **sampling,
    )
    return RecordingContext(None, tokenizer, args, image_size=side * FACTOR)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> tuple[Path, Path, str]:
    """One shape image and a captions file naming it → (captions file, image path, caption)."""
    folder = tmp_path_factory.mktemp("layout_images")
    picture, caption = shape_image(5, 96)
    picture.save(folder / "shape.png")
    (folder / "captions.tsv").write_text(f"shape.png\t{caption}\n", encoding="utf-8")
    return folder / "captions.tsv", folder / "shape.png", caption


def preprocessed_rows(image, vqvae_path: Path, tmp_path: Path, layout: str, side: int) -> list[list[int]]:
    captions, _, _ = image
    out = tmp_path / f"{layout}-{side}.lmdb"
    settings = {"captions": captions, "output": out, "img_tokenizer_path": vqvae_path, "device": "cpu"}
    Preprocessor(PreprocessConfig(**settings, layout=layout, encode_size=side)).run()
    with open_lmdb(out).begin() as txn:
        count = int(txn.get(b"length"))
        return [load_row(txn.get(str(i).encode())).tolist() for i in range(count)]


@pytest.mark.parametrize("side", GRIDS)
def test_text2image_query_is_the_training_row_without_its_codes(
    side, image, tiny_tokenizer, tiny_vqvae_path, tmp_path
):
    (row,) = preprocessed_rows(image, tiny_vqvae_path, tmp_path, layouts.TEXT2IMAGE, side)
    ctx = context(tiny_tokenizer, side)
    ctx.truth = row[:-1]
    TASKS["text2image"].run(ctx, [image[2]])
    codes = side * side
    assert row[-codes - 3 : -codes - 1] == [
        tiny_tokenizer[layouts.SIZE_TOKENS[side]],
        tiny_tokenizer["[BOI1]"],
    ]
    assert ctx.seen == [row[: -codes - 1] + [MASK] * codes]  # the closing [EOI1] is never generated


@pytest.mark.parametrize("side", GRIDS)
def test_image2text_query_and_post_selection_rows_are_the_training_row(
    side, image, tiny_tokenizer, tiny_vqvae_path, tmp_path, monkeypatch
):
    (row,) = preprocessed_rows(image, tiny_vqvae_path, tmp_path, layouts.IMAGE2TEXT, side)
    _, path, caption = image
    text_length = len(tiny_tokenizer.EncodeAsIds(caption))
    ctx = context(tiny_tokenizer, side)
    ctx.truth = row[:-text_length] + [tiny_tokenizer.EncodeAsIds("猫")[0]] * CAPTION_LENGTH
    TASKS["image2text"].run(ctx, [str(path)])
    assert ctx.seen == [row[:-text_length] + [MASK] * CAPTION_LENGTH]

    scored = []
    monkeypatch.setattr(
        generation.scoring,
        "inverse_prompt_score",
        lambda model, rows, tokenizer, multiple: scored.extend(rows) or torch.zeros(len(rows)),
    )
    TASKS["post-selection"].run(ctx, [caption, str(path), str(path)])
    assert scored == [row, row]


@pytest.mark.parametrize("side", GRIDS)
def test_super_resolution_windows_are_the_training_rows(
    side, image, tiny_tokenizer, tiny_vqvae_path, tmp_path, monkeypatch
):
    rows = preprocessed_rows(image, tiny_vqvae_path, tmp_path, layouts.SUPER_RESOLUTION, side)
    assert len(rows) == 9
    seen = []

    def recording_filling_sequence(model, seq, args, **options):
        row = rows[len(seen)]
        seen.append(seq.tolist())
        return torch.tensor(
            [[t if i == MASK else i for i, t in zip(seq.tolist(), row[: len(seq)], strict=True)]]
        )

    magnify_module = importlib.import_module("generation.magnify")  # the package exports the function
    monkeypatch.setattr(magnify_module, "filling_sequence", recording_filling_sequence)
    ctx = context(tiny_tokenizer, side)
    TASKS["super-resolution"].run(ctx, [image[2], str(image[1])])
    assert len(seen) == 9
    generated = 0
    for window, (seq, row) in enumerate(zip(seen, rows, strict=True)):
        given = [(k, i) for k, i in enumerate(seq) if i != MASK]
        assert given == [(k, row[k]) for k, _ in given], f"window {window}"
        assert len(seq) <= len(row) and MASK not in seq[: len(row) - side * side]  # masks: hi-res block only
        generated += len(seq) - len(given)
    assert generated == (2 * side) ** 2  # every hi-res code exactly once


def test_drop_caption_keeps_roi1_and_everything_from_the_size_token(real_tokenizer):
    tok = real_tokenizer
    caption = tok.EncodeAsIds("一只可爱的猫")
    codes = list(range(64))
    row = layouts.text2image(tok, caption, codes)
    assert layouts.drop_caption(tok, row) == [
        tok["[ROI1]"],
        tok["[TINY]"],
        tok["[BOI1]"],
        *codes,
        tok["[EOI1]"],
    ]
    query = layouts.text2image(tok, caption, [MASK] * 64, end_image=False)
    assert layouts.drop_caption(tok, query) == [tok["[ROI1]"], tok["[TINY]"], tok["[BOI1]"], *[MASK] * 64]
    assert layouts.drop_caption(tok, layouts.drop_caption(tok, row)) == layouts.drop_caption(tok, row)


def test_drop_caption_refuses_rows_without_a_text2image_caption(real_tokenizer):
    tok = real_tokenizer
    caption, codes = tok.EncodeAsIds("猫"), list(range(64))
    rows = [
        layouts.image2text(tok, codes, caption),
        *layouts.super_resolution_rows(tok, caption, codes, range(256)),
    ]
    for row in rows[:2]:
        with pytest.raises(InputError, match="Only a text2image row"):
            layouts.drop_caption(tok, row)
