"""Each task feeds the sampler the exact sequence of its layout and decodes what comes back, checked against
sequences built here by hand: ids from SentencePiece and the VQ-VAE directly, command ids by number.

The sampler (``filling_sequence``, or ``magnify`` for super-resolution) is replaced by a recorder that
returns hand-chosen codes, so the expected images are decoded from known codes by the VQ-VAE itself.
"""

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image

import generation.tasks.base as task_base
import generation.tasks.super_resolution as super_resolution_task
import vqvae
from arguments import get_args
from data_utils.unified_tokenizer import QueryError, UnifiedTokenizer
from generation.filling import filling_sequence
from generation.runtime import build_model
from generation.tasks import TASKS, TaskContext
from tests.test_generate_samples import BATCH, cli_args
from tests.test_preprocess import BOI1, BOI2, EOI1, POS0, ROI1, ROI2, TINY

IMAGE_IDS = 64  # the tiny CogView's VQ-VAE: 64 codes, so text id = SentencePiece id + 64
TEXT_END = IMAGE_IDS + 50000  # first command id


@pytest.fixture(scope="module")
def ctx(tiny_cogview: dict) -> TaskContext:
    args = get_args(cli_args(tiny_cogview, "--top_k", "20"))
    tokenizer = UnifiedTokenizer(args.img_tokenizer_path, "cpu")
    return TaskContext(build_model(args, tokenizer.num_tokens, torch.device("cpu")), tokenizer, args)


@pytest.fixture(scope="module")
def image_model(tiny_cogview: dict) -> vqvae.VQVAE:
    return vqvae.load_vqvae(tiny_cogview["vqvae"])


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(path)
    return path


def text_ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    return [IMAGE_IDS + i for i in sp.EncodeAsIds(text)]


def codes(model: vqvae.VQVAE, path: Path, size: int) -> list[int]:
    return vqvae.img2code(model, vqvae.read_img(path, size))[0].tolist()


class RecordingSampler:
    """Stands in for ``filling_sequence``: records each sequence and fills its −1 entries with ``fill``."""

    def __init__(self, fill: list[list[int]] | None = None):
        self.fill, self.calls, self.outputs = fill, [], []

    def __call__(self, model, seq, args, **kwargs) -> torch.Tensor:
        seq = torch.as_tensor(seq)
        self.calls.append((seq.tolist(), args.batch_size))
        if self.fill is None:  # the real sampler, recorded
            out = filling_sequence(model, seq, args, **kwargs)
        else:
            out = seq.repeat(len(self.fill), 1)
            out[:, seq < 0] = torch.tensor(self.fill)
        self.outputs.append(out.clone())
        return out


def hand_codes(count: int, batch: int = BATCH) -> list[list[int]]:
    generator = torch.Generator().manual_seed(count)
    return torch.randint(0, IMAGE_IDS, (batch, count), generator=generator).tolist()


def test_text2image_feeds_its_layout_and_decodes_the_codes(ctx, real_sp, image_model, monkeypatch):
    fill = hand_codes(64)
    sampler = RecordingSampler(fill)
    monkeypatch.setattr(task_base, "filling_sequence", sampler)
    result = TASKS["text2image"].run(ctx, ["一只猫"])
    assert sampler.calls == [([ROI1, *text_ids(real_sp, "一只猫"), TINY, BOI1, *[-1] * 64], BATCH)]
    assert len(result.samples) == BATCH
    for image, sample_codes in zip(result.samples, fill, strict=True):
        expected = vqvae.code2img(image_model, torch.tensor([sample_codes]))
        torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)


def test_raw_keeps_the_given_codes_and_decodes_text_and_image(ctx, real_sp, image_model, photo, monkeypatch):
    fill = hand_codes(24)
    sampler = RecordingSampler(fill)
    monkeypatch.setattr(task_base, "filling_sequence", sampler)
    result = TASKS["raw"].run(ctx, [f"[ROI1] 一只猫 [TINY] [BOI1] [Image40]{photo}"])
    given = codes(image_model, photo, 256)[:40]
    assert sampler.calls == [([ROI1, *text_ids(real_sp, "一只猫"), TINY, BOI1, *given, *[-1] * 24], BATCH)]
    assert result.line == "\t".join(["[ROI1] 一只猫 [TINY] [BOI1]"] * BATCH)
    for image, generated in zip(result.samples, fill, strict=True):
        expected = vqvae.code2img(image_model, torch.tensor([given + generated]))
        torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)
    with pytest.raises(QueryError, match="nothing to generate"):
        TASKS["raw"].run(ctx, ["[ROI1] 一只猫"])


def test_image2text_feeds_the_image_and_decodes_the_text(ctx, real_sp, image_model, photo, monkeypatch):
    words = ["一只", "猫", "在", "踢", "足球"]
    pieces = [real_sp.EncodeAsIds(word)[-1] for word in words] * 4  # 20 text ids
    sampler = RecordingSampler([[IMAGE_IDS + i for i in pieces], [IMAGE_IDS + i for i in reversed(pieces)]])
    monkeypatch.setattr(task_base, "filling_sequence", sampler)
    result = TASKS["image2text"].run(ctx, [str(photo)])
    assert sampler.calls == [([TINY, BOI1, *codes(image_model, photo, 256), EOI1, ROI1, *[-1] * 20], BATCH)]
    captions = [" ".join(real_sp.DecodeIds(ids).split()) for ids in (pieces, pieces[::-1])]
    assert result.line == "\t".join(captions)


def test_image2text_captions_are_made_only_of_text_ids(ctx, real_sp, photo, monkeypatch):
    sampler = RecordingSampler()  # the real sampler on the random tiny model
    monkeypatch.setattr(task_base, "filling_sequence", sampler)
    ctx.generator = torch.Generator().manual_seed(2)
    result = TASKS["image2text"].run(ctx, [str(photo)])
    (out,) = sampler.outputs
    caption_ids = out[:, -20:]
    assert ((caption_ids >= IMAGE_IDS) & (caption_ids < TEXT_END)).all()  # no image, command or padding id
    expected = [
        " ".join(real_sp.DecodeIds([i - IMAGE_IDS for i in row]).split()) for row in caption_ids.tolist()
    ]
    assert result.line.split("\t") == expected


def test_low_level_super_resolution_reads_the_image_at_half_size(
    ctx, real_sp, image_model, photo, monkeypatch
):
    fill = hand_codes(64)
    sampler = RecordingSampler(fill)
    monkeypatch.setattr(task_base, "filling_sequence", sampler)
    result = TASKS["low-level super-resolution"].run(ctx, ["一只猫", str(photo)])
    low = codes(image_model, photo, 128)  # 128² px → 4×4 codes
    assert len(low) == 16
    prompt = [ROI1, *text_ids(real_sp, "一只猫"), TINY, BOI1, *low, EOI1, ROI2, POS0, TINY, BOI2]
    assert sampler.calls == [([*prompt, *[-1] * 64], BATCH)]
    for image, sample_codes in zip(result.samples, fill, strict=True):
        expected = vqvae.code2img(image_model, torch.tensor([sample_codes]))
        torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)


def test_super_resolution_magnifies_the_full_size_codes(ctx, real_sp, image_model, photo, monkeypatch):
    high = hand_codes(256, batch=1)[0]
    calls = []

    def recording_magnify(model, tokenizer, tokens_list, text_token_list, args, **kwargs):
        calls.append((torch.as_tensor(tokens_list).tolist(), torch.as_tensor(text_token_list).tolist()))
        return torch.tensor(high)

    monkeypatch.setattr(super_resolution_task, "magnify", recording_magnify)
    result = TASKS["super-resolution"].run(ctx, ["一只猫", str(photo)])
    assert calls == [(codes(image_model, photo, 256), [ROI1, *text_ids(real_sp, "一只猫"), TINY, BOI1])]
    (image,) = result.samples
    expected = vqvae.code2img(image_model, torch.tensor([high]))  # 16×16 codes → 512² px
    assert image.shape == (1, 3, 512, 512)
    torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)
