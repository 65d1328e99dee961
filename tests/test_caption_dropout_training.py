"""Caption dropout reaches the training batches (pretrain_gpt2's loaders and get_batch)."""

import numpy as np

from arguments import get_args
from data_utils import layouts, make_loaders
from data_utils.datasets import pad_to_length
from data_utils.unified_tokenizer import UnifiedTokenizer
from tests.helpers.training import IMAGE_TOKENS, SEQUENCE, train_argv, write_dataset
from training.batch import get_batch


def test_training_batches_hold_the_unconditional_rows(tmp_path):
    data = write_dataset(tmp_path / "demo_t2i.lmdb", count=8)
    tokenizer = UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=IMAGE_TOKENS)
    batches = {}
    for probability in ("0", "1"):
        args = get_args(train_argv(data, "--batch-size", "4", "--caption-dropout", probability))
        train, _, _ = make_loaders(args, tokenizer)
        batches[probability] = get_batch(iter(train), args)
    plain, dropped = batches["0"], batches["1"]
    pad = tokenizer["[PAD]"]
    for row, tokens, labels, loss_mask in zip(plain[0], dropped[0], dropped[1], dropped[2], strict=True):
        stored = [t for t in row.tolist() if t != pad]  # the rows are shorter than the sequence
        expected = pad_to_length(np.array(layouts.drop_caption(tokenizer, stored)), SEQUENCE, pad)
        assert len(expected["text"]) == SEQUENCE and stored != expected["text"][: len(stored)].tolist()
        assert [*tokens.tolist(), int(labels[-1])] == expected["text"].tolist()
        assert loss_mask.tolist() == expected["loss_mask"][1:].astype(float).tolist()
