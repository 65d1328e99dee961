"""filling_sequence: greedy decoding on the KV cache equals a brute-force loop of full forwards."""

from types import SimpleNamespace

import pytest
import torch

from generation import batch_chunks, filling_sequence, position_ids
from model import GPT2Model


def tiny_gpt(vocab_size: int, positions: int = 128) -> GPT2Model:
    """A 2-layer, 32-wide random GPT2Model in eval mode (shared by the generation tests)."""
    torch.manual_seed(0)
    model = GPT2Model(2, vocab_size, 32, 4, 0.0, 0.0, 0.0, positions, 0, False).eval()
    with torch.no_grad():  # spread the logits so that greedy choices are far from ties
        model.word_embeddings.weight.mul_(20)
    return model


def sampling_args(batch_size=1, max_inference_batch_size=1, top_k=0, top_p=0.0, temperature=1.0):
    return SimpleNamespace(
        batch_size=batch_size,
        max_inference_batch_size=max_inference_batch_size,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
    )


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer  # 64 image ids, the released text model, 27 commands


@pytest.fixture(scope="module")
def model(tok):
    return tiny_gpt(len(tok) + (-len(tok)) % 128)


def allowed_ids(tok, given_before: list[int], vocab_size: int) -> torch.Tensor:
    """§8.2 written out directly: the last given BOI/EOI decides; vocab padding is never allowed."""
    image, command, total = tok.num_image_tokens, tok["[PAD]"], len(tok)
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[image:total] = True  # text state
    for token in given_before:
        if token in (tok["[BOI1]"], tok["[BOI2]"]):
            allowed[:] = False
            allowed[:image] = True
        elif token in (tok["[EOI1]"], tok["[EOI2]"]):
            allowed[:] = False
            allowed[image:command] = True
    return allowed


def brute_force_greedy(model, tok, seq: list[int], extra_invalid=()) -> list[int]:
    """One full forward per generated token over everything before it, then the argmax of the allowed ids."""
    context = next(i for i, t in enumerate(seq) if t < 0)
    roi2 = [i for i in range(context) if seq[i] == tok["[ROI2]"]]
    offset = roi2[-1] if roi2 else len(seq)
    positions = [i - offset if i > offset else i for i in range(len(seq))]
    tokens = list(seq)
    vocab = model.word_embeddings.weight.size(0)
    with torch.no_grad():
        for i in range(context, len(seq)):
            if seq[i] >= 0:
                continue
            logits = model(torch.tensor([tokens[:i]]), torch.tensor([positions[:i]]), 0)[0][0, -1]
            allowed = allowed_ids(tok, [t for t in seq[:i] if t >= 0], vocab)
            for forbidden in extra_invalid:
                allowed[forbidden] = False
            tokens[i] = int(logits.masked_fill(~allowed, -float("inf")).argmax())
    return tokens


def text(tok, words: str) -> list[int]:
    return tok.EncodeAsIds(words)


def test_greedy_text_to_image_then_caption_equals_brute_force(model, tok):
    # image generation, then a given [EOI1] [ROI1] after generated tokens, then text generation
    seq = [tok["[ROI1]"], *text(tok, "一只老虎"), tok["[TINY]"], tok["[BOI1]"], *[-1] * 10]
    seq += [tok["[EOI1]"], tok["[ROI1]"], *[-1] * 5]
    out = filling_sequence(model, torch.tensor(seq), sampling_args(top_k=1), tokenizer=tok)
    expected = brute_force_greedy(model, tok, seq)
    assert out.tolist() == [expected]
    generated_image = expected[len(text(tok, "一只老虎")) + 3 :][:10]
    assert all(0 <= t < tok.num_image_tokens for t in generated_image)
    caption = expected[-5:]
    assert all(tok.num_image_tokens <= t < tok["[PAD]"] for t in caption)


def test_greedy_with_roi2_offset_and_interleaved_given_tokens_in_batches(model, tok):
    # the super-resolution layout: positions restart after [ROI2]; given hi-res codes between generated ones
    low = [5, 9, 17, 33]
    seq = [tok["[ROI1]"], *text(tok, "猫"), tok["[TINY]"], tok["[BOI1]"], *low, tok["[EOI1]"]]
    seq += [tok["[ROI2]"], tok["[POS0]"], tok["[TINY]"], tok["[BOI2]"]]
    seq += [7, 8, -1, -1, 11, -1, 12, 13, 14, -1, -1, -1, 3]
    args = sampling_args(batch_size=5, max_inference_batch_size=2, top_k=1)
    out = filling_sequence(model, torch.tensor(seq), args, tokenizer=tok)
    expected = brute_force_greedy(model, tok, seq)
    assert out.shape == (5, len(seq))
    assert out.tolist() == [expected] * 5


def test_extra_invalid_slices_are_honoured(model, tok):
    seq = [tok["[ROI1]"], *text(tok, "一只老虎"), tok["[TINY]"], tok["[BOI1]"], *[-1] * 6]
    plain = brute_force_greedy(model, tok, seq)
    banned = sorted(set(plain[-6:]))
    extra = [slice(t, t + 1) for t in banned] + [slice(40, None)]
    out = filling_sequence(model, seq, sampling_args(top_k=1), invalid_slices=extra, tokenizer=tok)
    assert out.tolist() == [brute_force_greedy(model, tok, seq, extra)]
    assert not set(out[0, -6:].tolist()) & set(banned)
    assert (out[0, -6:] < 40).all()


def test_first_token_frequencies_match_the_filtered_distribution(model, tok):
    # 4000 samples of one image token: every row draws from the context's top-5 distribution
    seq = torch.tensor([tok["[ROI1]"], *text(tok, "一只老虎"), tok["[TINY]"], tok["[BOI1]"], -1])
    args = sampling_args(batch_size=4000, max_inference_batch_size=1500, top_k=5, temperature=0.7)
    generator = torch.Generator().manual_seed(0)
    out = filling_sequence(model, seq, args, tokenizer=tok, generator=generator)
    with torch.no_grad():
        logits = model(seq[None, :-1], torch.arange(len(seq) - 1)[None], 0)[0][0, -1, : tok.num_image_tokens]
    top = torch.topk(logits, 5)
    probs = torch.softmax(top.values / 0.7, dim=0)
    counts = torch.bincount(out[:, -1], minlength=tok.num_image_tokens).double()
    assert counts.sum() == 4000 and counts[top.indices].sum() == 4000
    expected = 4000 * probs.double()
    chi2 = ((counts[top.indices] - expected) ** 2 / expected).sum()
    p_value = torch.special.gammaincc(torch.tensor(4 / 2.0, dtype=torch.double), chi2 / 2)
    assert p_value > 1e-3, (counts[top.indices], expected)


def test_sampled_rows_differ_and_keep_given_tokens(model, tok):
    # the original collapsed all samples to one at a given token after generated ones (shrink_beams)
    seq = [tok["[ROI1]"], *text(tok, "猫"), tok["[TINY]"], tok["[BOI1]"], *[-1] * 8, tok["[EOI1]"], -1, -1]
    args = sampling_args(batch_size=6, max_inference_batch_size=4)
    out = filling_sequence(model, seq, args, tokenizer=tok, generator=torch.Generator().manual_seed(1))
    given = torch.tensor([t >= 0 for t in seq])
    assert (out[:, given] == torch.tensor(seq)[given]).all()
    assert len({tuple(row) for row in out[:, 4:12].tolist()}) == 6
    assert (out[:, 4:12] < tok.num_image_tokens).all()
    again = filling_sequence(model, seq, args, tokenizer=tok, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_sequence_without_negatives_is_returned_per_sample(model, tok):
    seq = [tok["[ROI1]"], *text(tok, "猫")]
    out = filling_sequence(model, seq, sampling_args(batch_size=3, max_inference_batch_size=2), tokenizer=tok)
    assert out.tolist() == [seq] * 3


def test_progress_bar_counts_generated_tokens(model, tok, capsys):
    seq = [tok["[ROI1]"], tok["[TINY]"], tok["[BOI1]"], -1, -1, -1]
    filling_sequence(
        model, seq, sampling_args(batch_size=2, max_inference_batch_size=2), tokenizer=tok, progress=True
    )
    assert "6/6" in capsys.readouterr().err


def test_on_step_reports_every_step_and_its_exception_stops_generation(model, tok):
    seq = [tok["[ROI1]"], tok["[TINY]"], tok["[BOI1]"], -1, -1, tok["[EOI1]"], -1]
    steps = []
    args = sampling_args(batch_size=3, max_inference_batch_size=2)
    filling_sequence(model, seq, args, tokenizer=tok, on_step=lambda done, total: steps.append((done, total)))
    # chunks of 2 then 1 sample, three generated positions each: 9 tokens in 6 steps
    assert steps == [(2, 9), (4, 9), (6, 9), (7, 9), (8, 9), (9, 9)]

    class Stop(Exception):
        pass

    def stop_at_four(done: int, total: int) -> None:
        steps.append(done)
        if done >= 4:
            raise Stop

    steps.clear()
    with pytest.raises(Stop):
        filling_sequence(model, seq, args, tokenizer=tok, on_step=stop_at_four)
    assert steps == [2, 4], "generation must stop at the step whose callback raised"


def test_position_ids_restart_after_the_last_context_roi2():
    roi2 = 99
    ids = [1, 99, 2, 99, 3, -1, 99, -1]
    assert position_ids(ids, 5, roi2) == [0, 1, 2, 3, 1, 2, 3, 4]
    assert position_ids([1, 2, -1, -1], 2, roi2) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("batch", "maximum", "chunks"), [(5, 2, [2, 2, 1]), (4, 4, [4]), (3, 8, [3]), (6, 3, [3, 3])]
)
def test_batch_chunks_any_combination(batch, maximum, chunks):
    assert batch_chunks(batch, maximum) == chunks


@pytest.mark.parametrize(
    ("seq", "kwargs", "error", "message"),
    [
        ([[1, -1]], {}, ValueError, "1-D sequence"),
        ([-1, -1], {}, ValueError, "at least one given token"),
        ([1] * 130 + [-1], {}, ValueError, "131 positions but the model has 128"),
        ([1, -1], {"mems": [torch.zeros(1)]}, ValueError, "mems must be None"),
        ([1, -1], {"temprature": 2}, TypeError, "temprature"),
    ],
)
def test_bad_input_gives_one_clear_error(model, tok, seq, kwargs, error, message):
    with pytest.raises(error, match=message):
        filling_sequence(model, torch.tensor(seq), sampling_args(), tokenizer=tok, **kwargs)


def test_bad_batch_sizes_are_rejected(model, tok):
    with pytest.raises(ValueError, match="--max-inference-batch-size"):
        filling_sequence(
            model, [1, -1], sampling_args(batch_size=2, max_inference_batch_size=0), tokenizer=tok
        )


def guided_reference(model, tok, seq: list[int], unconditional: list[int], scale: float):
    """Guided greedy decoding from full forwards of both sequences: (tokens, masked logits of each step)."""
    context = next(i for i, t in enumerate(seq) if t < 0)
    shift = context - next(i for i, t in enumerate(unconditional) if t < 0)
    tokens, steps = list(seq), []
    vocab = model.word_embeddings.weight.size(0)
    with torch.no_grad():
        for i in range(context, len(seq)):
            if seq[i] >= 0:
                continue
            other = unconditional[: context - shift] + tokens[context:i]
            conditional = model(torch.tensor([tokens[:i]]), torch.arange(i)[None], 0)[0][0, -1]
            free = model(torch.tensor([other]), torch.arange(len(other))[None], 0)[0][0, -1]
            allowed = allowed_ids(tok, [t for t in seq[:i] if t >= 0], vocab)
            guided = (free + scale * (conditional - free)).masked_fill(~allowed, -float("inf"))
            steps.append(guided[allowed])
            tokens[i] = int(guided.argmax())
    return tokens, steps


def greedy_run(model, tok, monkeypatch, seq, args, row=0, **options):
    """``filling_sequence`` drawing greedily: its output, and the allowed logits of row ``row`` per step."""
    seen = []

    def greedy(logits, *_args):
        seen.append(logits[row, torch.isfinite(logits[row])].clone())
        return logits.argmax(dim=-1), None

    monkeypatch.setattr("generation.filling.sample", greedy)
    return filling_sequence(model, seq, args, tokenizer=tok, **options), seen


def test_guidance_samples_from_the_guided_logits_of_two_separate_forwards(model, tok, monkeypatch):
    # image codes, then given tokens after generated ones, then text: every step of the cached, chunked
    # path sees unconditional + S·(conditional − unconditional) of full forwards over the two sequences
    seq = [tok["[ROI1]"], *text(tok, "一只老虎"), tok["[TINY]"], tok["[BOI1]"], *[-1] * 6]
    seq += [tok["[EOI1]"], tok["[ROI1]"], -1, -1]
    unconditional = [tok["[ROI1]"], tok["[TINY]"], tok["[BOI1]"], *seq[len(text(tok, "一只老虎")) + 3 :]]
    expected, reference_steps = guided_reference(model, tok, seq, unconditional, 3.0)
    args = sampling_args(batch_size=3, max_inference_batch_size=2)
    out, seen = greedy_run(model, tok, monkeypatch, seq, args, guidance_scale=3.0)  # default: drop_caption
    assert out.tolist() == [expected] * 3
    assert len(seen) == 2 * len(reference_steps)  # two chunks
    for step, reference in zip(seen, reference_steps * 2, strict=True):
        torch.testing.assert_close(step, reference, rtol=0, atol=1e-4)
    unguided = filling_sequence(model, seq, sampling_args(), tokenizer=tok)
    assert unguided.tolist() != [expected]  # the scale changed what was drawn


def test_guidance_with_an_unconditional_context_longer_than_the_sequences(model, tok, monkeypatch):
    # both contexts share one batch on one cache; here the sequence's own context is the one left-padded
    seq = [tok["[ROI1]"], *text(tok, "猫"), tok["[TINY]"], tok["[BOI1]"], *[-1] * 6]
    unconditional = [tok["[ROI1]"], *text(tok, "一只老虎在草地上"), tok["[TINY]"], tok["[BOI1]"], *[-1] * 6]
    assert len(unconditional) > len(seq)
    expected, reference_steps = guided_reference(model, tok, seq, unconditional, 2.0)
    args = sampling_args(batch_size=2, max_inference_batch_size=2)
    out, seen = greedy_run(
        model, tok, monkeypatch, seq, args, row=1, guidance_scale=2.0, unconditional=unconditional
    )
    assert out.tolist() == [expected] * 2
    for step, reference in zip(seen, reference_steps, strict=True):
        torch.testing.assert_close(step, reference, rtol=0, atol=1e-4)


def test_guidance_scale_1_is_the_unguided_output_bit_for_bit(model, tok):
    seq = [tok["[ROI1]"], *text(tok, "猫"), tok["[TINY]"], tok["[BOI1]"], *[-1] * 8]
    args = sampling_args(batch_size=3, max_inference_batch_size=2, top_k=20)
    plain = filling_sequence(model, seq, args, tokenizer=tok, generator=torch.Generator().manual_seed(3))
    at_one = filling_sequence(
        model, seq, args, tokenizer=tok, generator=torch.Generator().manual_seed(3), guidance_scale=1.0
    )
    assert torch.equal(plain, at_one)


def test_an_unconditional_sequence_with_another_tail_is_refused(model, tok):
    seq = [tok["[ROI1]"], *text(tok, "猫"), tok["[TINY]"], tok["[BOI1]"], -1, -1]
    with pytest.raises(ValueError, match="same tokens to generate"):
        filling_sequence(
            model, seq, sampling_args(), tokenizer=tok, guidance_scale=2.0, unconditional=[tok["[ROI1]"], -1]
        )
