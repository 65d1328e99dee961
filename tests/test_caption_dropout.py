"""Caption dropout: dropped text2image samples are the padded unconditional rows guidance queries with."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from data_utils import layouts, make_loaders
from data_utils.caption_dropout import CaptionDropout, drop_caption_sample
from data_utils.dataset_writers import write_lmdb
from data_utils.datasets import pad_to_length
from tests.test_loaders import make_args

LENGTH = 100
CODES = list(range(64))  # an 8×8 grid


def sample(tok, row: list[int]):
    return pad_to_length(np.array(row), LENGTH, tok["[PAD]"])


def test_a_dropped_sample_is_the_padded_unconditional_row(real_tokenizer):
    tok = real_tokenizer
    row = layouts.text2image(tok, tok.EncodeAsIds("一只可爱的猫"), CODES)
    dropped = drop_caption_sample({**sample(tok, row), "extra": np.ones(2)}, tok)
    expected = sample(tok, layouts.drop_caption(tok, row))  # padded by the reader's own function
    assert dropped["text"].tolist() == expected["text"].tolist()
    assert dropped["loss_mask"].tolist() == expected["loss_mask"].tolist()
    assert dropped["text"].dtype == np.int64 and dropped["extra"].tolist() == [1, 1]


def test_other_layouts_and_empty_captions_are_kept(real_tokenizer):
    tok = real_tokenizer
    text = tok.EncodeAsIds("猫")
    rows = [
        layouts.image2text(tok, CODES, text),
        layouts.super_resolution_rows(tok, text, CODES, range(256))[0],
        layouts.text2image(tok, [], CODES),
    ]
    for row in rows:
        original = pad_to_length(np.array(row), max(LENGTH, len(row)), tok["[PAD]"])
        assert drop_caption_sample(original, tok) is original


class Rows:
    """A dataset of one text2image sample, repeated."""

    def __init__(self, tok, count: int):
        self.row = sample(tok, layouts.text2image(tok, tok.EncodeAsIds("一只猫"), CODES))
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.row


def test_which_items_drop_depends_on_seed_and_index_only(real_tokenizer):
    tok = real_tokenizer
    dataset = CaptionDropout(Rows(tok, 4000), 0.1, seed=3, tokenizer=tok)
    forwards = [dataset.dropped(i) for i in range(4000)]
    backwards = [dataset.dropped(i) for i in reversed(range(4000))][::-1]
    copy = pickle.loads(pickle.dumps(dataset))  # as a loader worker gets it
    assert forwards == backwards == [copy.dropped(i) for i in range(4000)]
    assert abs(sum(forwards) - 400) < 4 * (4000 * 0.1 * 0.9) ** 0.5  # binomial, four sigma
    other_seed = CaptionDropout(Rows(tok, 4000), 0.1, seed=4, tokenizer=tok)
    assert forwards != [other_seed.dropped(i) for i in range(4000)]
    kept, dropped = forwards.index(False), forwards.index(True)
    assert dataset[kept] is dataset.dataset.row
    assert dataset[dropped]["text"].tolist() == drop_caption_sample(dataset.dataset.row, tok)["text"].tolist()
    with pytest.raises(ValueError, match="outside"):
        CaptionDropout(Rows(tok, 1), 1.5, 0, tok)


def test_training_loaders_drop_captions_and_evaluation_loaders_never(tmp_path: Path, real_tokenizer):
    tok = real_tokenizer
    row = layouts.text2image(tok, tok.EncodeAsIds("一只猫"), CODES)
    path = tmp_path / "demo_t2i.lmdb"
    write_lmdb(path, [np.array(row)] * 40)
    args = make_args(tmp_path, train_data=[str(path)], split="1,1,0", batch_size=4, seed=1)
    args.max_position_embeddings = LENGTH
    args.caption_dropout = 0.5
    train, valid, _ = make_loaders(args, tok)
    unconditional = sample(tok, layouts.drop_caption(tok, row))["text"].tolist()
    trained = [text.tolist() for batch, _ in zip(train, range(10), strict=False) for text in batch["text"]]
    assert {tuple(text) for text in trained} == {tuple(sample(tok, row)["text"]), tuple(unconditional)}
    assert sum(text == unconditional for text in trained) == sum(train.dataset.dropped(i) for i in range(40))
    evaluated = [text.tolist() for batch, _ in zip(valid, range(5), strict=False) for text in batch["text"]]
    assert unconditional not in evaluated
