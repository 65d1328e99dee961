"""Results do not depend on the model-parallel vocabulary padding: only the MP=1 rows join a softmax."""

import pytest
import torch
import torch.nn.functional as F

from data_utils.unified_tokenizer import UnifiedTokenizer
from generation import filling_sequence, inverse_prompt_score
from model import GPT2Model
from model.partition import mask_model_parallel_padding, padded_vocab_size, resize_vocab
from tests.test_filling import sampling_args, tiny_gpt

NUM_TOKENS = 639  # 640 rows at MP=1, 768 at MP=2


def test_padding_masks_exactly_the_rows_mp_adds():
    logits = torch.randn(2, 3, padded_vocab_size(NUM_TOKENS, 2))  # [b, s, 768]
    masked = mask_model_parallel_padding(logits, NUM_TOKENS)
    assert torch.equal(masked[..., :640], logits[..., :640])  # the MP=1 padding rows 639 stay
    assert torch.isneginf(masked[..., 640:]).all()
    assert not torch.isneginf(logits).any()  # out of place
    shards = [
        mask_model_parallel_padding(part, NUM_TOKENS, first_id=384 * r)
        for r, part in enumerate(logits.split(384, dim=-1))
    ]
    assert torch.equal(torch.cat(shards, dim=-1), masked)
    window = mask_model_parallel_padding(logits[..., 600:700], NUM_TOKENS, first_id=600)
    assert torch.equal(window, masked[..., 600:700])
    at_mp1 = logits[..., :640]
    assert mask_model_parallel_padding(at_mp1, NUM_TOKENS) is at_mp1  # nothing to mask: no copy
    assert torch.isneginf(mask_model_parallel_padding(logits, NUM_TOKENS, multiple=64)[..., 640:]).all()


def test_masked_cross_entropy_equals_the_mp1_vocabulary():
    logits = torch.randn(4, padded_vocab_size(NUM_TOKENS, 2), requires_grad=True)
    target = torch.tensor([0, 100, 638, 7])
    loss = F.cross_entropy(mask_model_parallel_padding(logits, NUM_TOKENS), target)
    reference = logits.detach()[:, :640].clone().requires_grad_()
    expected = F.cross_entropy(reference, target)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits.grad[:, :640], reference.grad, rtol=0, atol=1e-7)
    assert torch.equal(logits.grad[:, 640:], torch.zeros(4, 128))


@pytest.fixture(scope="module")
def real_layout():
    """8192 image ids + 50000 text + 27 commands = 58219 tokens: 58240 rows at MP=1, 58368 at MP=2."""
    return UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=8192)


@pytest.fixture(scope="module")
def models(real_layout):
    """A tiny model at the MP=1 padding and the same weights zero-padded as loading at MP=2 pads them."""
    num_tokens = len(real_layout)
    at_mp1 = tiny_gpt(padded_vocab_size(num_tokens, 1))
    rows = padded_vocab_size(num_tokens, 2)
    at_mp2 = GPT2Model(2, rows, 32, 4, 0.0, 0.0, 0.0, 128, 0, False).eval()
    at_mp2.load_state_dict(resize_vocab(at_mp1.state_dict(), rows))
    return at_mp1, at_mp2


def test_scores_do_not_depend_on_the_mp_padding(real_layout, models):
    tok = real_layout
    generator = torch.Generator().manual_seed(0)
    caption = tok.EncodeAsIds("一只老虎在踢足球")
    images = torch.randint(0, 8192, (2, 64), generator=generator).tolist()
    rows = [
        [tok["[TINY]"], tok["[BOI1]"], *image, tok["[EOI1]"], tok["[ROI1]"], *caption] for image in images
    ]
    at_mp1, at_mp2 = (inverse_prompt_score(model, rows, tok) for model in models)
    # Measured: without the mask the 128 zero rows move these scores by 1.1e-3; with it, by 0.
    torch.testing.assert_close(at_mp2, at_mp1, rtol=0, atol=1e-5)


def test_sampled_text_does_not_depend_on_the_mp_padding(real_layout, models):
    tok = real_layout
    seq = [tok["[TINY]"], tok["[BOI1]"], *range(64), tok["[EOI1]"], tok["[ROI1]"], *[-1] * 8]
    args = sampling_args(batch_size=3, max_inference_batch_size=3)
    captions = [
        filling_sequence(model, seq, args, tokenizer=tok, generator=torch.Generator().manual_seed(1))
        for model in models
    ]
    assert torch.equal(captions[0], captions[1])
    assert ((captions[0][:, -8:] >= 8192) & (captions[0][:, -8:] < tok["[PAD]"])).all()  # text ids only
