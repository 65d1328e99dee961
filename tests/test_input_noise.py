"""--sr-input-noise: which input codes it changes, what it puts there, and that only training sees it."""

import pytest
import torch
from torch import nn

import mpu
from arguments import get_args
from data_utils import UnifiedTokenizer, unified_tokenizer
from tests.helpers.distributed import run_distributed
from training.input_noise import corrupt_block_inputs
from training.step import forward_step

BOI2, PAD, IMAGE_TOKENS = 900, 901, 100


def sr_row(block: list[int], padding: int = 0) -> list[int]:
    """A super-resolution-like row: text ids ≥ IMAGE_TOKENS, a crop, [BOI2], the block, then padding."""
    return [500, 501, 7, 8, 9, 502, BOI2, *block, *[PAD] * padding]


def test_only_the_block_after_boi2_changes_and_only_to_its_own_codes():
    block = list(range(10, 40))
    tokens = torch.tensor([sr_row(block, padding=3), [500, *range(40, 79)]])  # the second row: no [BOI2]
    generator = torch.Generator().manual_seed(0)
    noisy = corrupt_block_inputs(tokens, BOI2, IMAGE_TOKENS, 1.0, generator)
    start = 7
    assert torch.equal(noisy[:, :start], tokens[:, :start]), "the crop and everything before [BOI2]"
    assert torch.equal(noisy[0, start + len(block) :], tokens[0, start + len(block) :]), "the padding"
    assert torch.equal(noisy[1], tokens[1]), "a row of another layout"
    assert set(noisy[0, start : start + len(block)].tolist()) <= set(block)
    assert not torch.equal(noisy[0], tokens[0])


def test_probability_zero_changes_nothing_and_one_half_about_half():
    block = list(range(IMAGE_TOKENS)) * 20  # 2,000 codes, replaced by a different one 99% of the time
    tokens = torch.tensor([sr_row(block)])
    assert torch.equal(corrupt_block_inputs(tokens, BOI2, IMAGE_TOKENS, 0.0), tokens)
    noisy = corrupt_block_inputs(tokens, BOI2, IMAGE_TOKENS, 0.5, torch.Generator().manual_seed(1))
    changed = float((noisy != tokens).float().sum()) / len(block)
    assert 0.45 < changed < 0.55
    assert torch.equal(tokens, torch.tensor([sr_row(block)])), "the input tensor is left as it was"


class RecordingModel(nn.Module):
    """Records the tokens it is given and returns uniform logits."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.seen: list[torch.Tensor] = []

    def forward(self, tokens, position_ids, attention_mask, *rest):
        self.seen.append(tokens.clone())
        return (torch.zeros(*tokens.shape, self.vocab, requires_grad=True),)


def noisy_forward_step(tokenizer: UnifiedTokenizer, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, what the model was fed)`` for one SR-like row through ``forward_step`` with noise 0.5."""
    text = torch.tensor([[tokenizer["[ROI1]"], 9000, 9001, 1, 2, tokenizer["[BOI2]"], *range(3, 203)]])
    args = get_args(["--sr-input-noise", "0.5", "--device", "cpu"])
    args.num_image_tokens, args.num_tokens = tokenizer.num_image_tokens, tokenizer.num_tokens
    model = RecordingModel(58240).train(training)
    batch = {"text": text, "loss_mask": torch.ones_like(text)}
    forward_step(iter([batch]), model, args, None, [])
    (seen,) = model.seen
    return text, seen


@pytest.mark.parametrize("training", [True, False])
def test_forward_step_corrupts_training_inputs_only(real_tokenizer, monkeypatch, training):
    monkeypatch.setattr(unified_tokenizer, "_TOKENIZER", real_tokenizer)
    text, seen = noisy_forward_step(real_tokenizer, training)
    assert torch.equal(seen[:, :6], text[:, :6])
    assert torch.equal(seen, text[:, :-1]) != training


def _noisy_inputs_at_mp2(rank, world_size):
    mpu.initialize_model_parallel(2)
    torch.manual_seed(rank)  # the ranks' generators differ, as a rank-0-only data loader can make them
    unified_tokenizer._TOKENIZER = UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=8192)
    return noisy_forward_step(unified_tokenizer._TOKENIZER, training=True)[1]


def test_model_parallel_ranks_are_fed_the_same_noisy_inputs():
    first, second = run_distributed(_noisy_inputs_at_mp2, 2)
    assert torch.equal(first, second)
