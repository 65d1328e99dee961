"""text2image's quality levers on the tiny CogView: --post-select K, --guidance-scale S, unknown-word notices.

Each result is checked against a reference computed another way: post-selection against a hand-made
draw of all candidates scored one by one with ``tests.test_scoring.hand_score``, guidance against
``filling_sequence`` given the unconditional query written out by hand, the notice against
SentencePiece's own pieces.
"""

import argparse
import dataclasses
import re

import pytest
import sentencepiece as spm
import torch

import generate_samples
from arguments import get_args
from data_utils.sp_tokenizer import SentencePieceTokenizer
from data_utils.unified_tokenizer import UnifiedTokenizer
from generation import filling_sequence
from generation.runtime import build_model
from generation.tasks import TASKS, TaskContext
from tests.helpers.tiny_cogview import tiny_cogview_argv
from tests.test_scoring import hand_score
from tools.make_tiny_cogview import make_tiny_cogview

CAPTION = "一只猫"
CODES = 64  # the tiny CogView's 8×8 grid

# generate_samples installs its tokenizer process-wide: each test gets it back afterwards.
pytestmark = pytest.mark.usefixtures("one_thread_per_module", "fresh_tokenizer_singleton")


def tiny_args(cogview: dict, *extra: str) -> list[str]:
    return tiny_cogview_argv(
        cogview, "--batch-size", "2", "--max-inference-batch-size", "4", "--top_k", "20", *extra
    )


@pytest.fixture(scope="module")
def ctx(tiny_cogview: dict) -> TaskContext:
    args = get_args(tiny_args(tiny_cogview))
    tokenizer = UnifiedTokenizer(args.img_tokenizer_path, "cpu")
    return TaskContext(build_model(args, tokenizer.num_tokens, torch.device("cpu")), tokenizer, args)


@pytest.fixture(scope="module")
def caption_checkpoint(ctx: TaskContext, tmp_path_factory: pytest.TempPathFactory):
    """A second tiny CogView (other random weights), standing in for cogview-caption: (folder, model)."""
    folder = make_tiny_cogview(tmp_path_factory.mktemp("caption") / "tiny", seed=1)["checkpoint"]
    return folder, build_model(ctx.args, ctx.tokenizer.num_tokens, torch.device("cpu"), load=folder)


def query(tok, caption_ids: list[int]) -> list[int]:
    return [tok["[ROI1]"], *caption_ids, tok["[TINY]"], tok["[BOI1]"], *[-1] * CODES]


@pytest.mark.parametrize("scorers", ["main", "caption", "both"])
def test_post_select_keeps_the_best_scored_candidate_of_each_image(ctx, caption_checkpoint, scorers):
    caption_models = {
        "main": (),
        "caption": (caption_checkpoint[1],),
        "both": (ctx.model, caption_checkpoint[1]),
    }
    run = dataclasses.replace(
        ctx, post_select=3, caption_models=caption_models[scorers], generator=torch.Generator()
    )
    run.generator.manual_seed(5)
    result = TASKS["text2image"].run(run, [CAPTION])

    tok = ctx.tokenizer
    caption_ids = tok.EncodeAsIds(CAPTION)
    six = argparse.Namespace(**{**vars(ctx.args), "batch_size": 6})  # 3 candidates for each of 2 images
    candidates = filling_sequence(
        ctx.model, query(tok, caption_ids), six, tokenizer=tok, generator=torch.Generator().manual_seed(5)
    )
    first_text = 2 + CODES + 2  # [TINY] [BOI1] codes [EOI1] [ROI1]
    rows = [
        [tok["[TINY]"], tok["[BOI1]"], *row[-CODES:].tolist(), tok["[EOI1]"], tok["[ROI1]"], *caption_ids]
        for row in candidates
    ]
    scorer_models = caption_models[scorers] or (ctx.model,)  # several: their scores add up
    scores = [sum(hand_score(model, tok, row, first_text) for model in scorer_models) for row in rows]
    best = [max(range(3), key=lambda k, g=g: scores[3 * g + k]) for g in range(2)]
    assert len(result.samples) == 2
    for image, group, k in zip(result.samples, range(2), best, strict=True):
        expected_image = tok.DecodeIds(candidates[3 * group + k, -CODES:])[1][0]
        assert torch.equal(image, expected_image)
    (line,) = [line for line in result.report if line.startswith("post-selection")]
    reported = [float(x) for x in re.search(r"scores (.*)\)", line).group(1).split(", ")]
    assert line.startswith(f"post-selection: kept candidate {best[0]}, {best[1]} of 3 per image")
    assert reported == pytest.approx([scores[3 * g + k] for g, k in enumerate(best)], abs=1e-3)


def test_guidance_runs_against_the_query_without_its_caption(ctx):
    run = dataclasses.replace(ctx, guidance_scale=2.5, generator=torch.Generator().manual_seed(2))
    result = TASKS["text2image"].run(run, [CAPTION])
    tok = ctx.tokenizer
    unconditional = [tok["[ROI1]"], tok["[TINY]"], tok["[BOI1]"], *[-1] * CODES]  # written out by hand
    expected = filling_sequence(
        ctx.model,
        query(tok, tok.EncodeAsIds(CAPTION)),
        ctx.args,
        tokenizer=tok,
        generator=torch.Generator().manual_seed(2),
        guidance_scale=2.5,
        unconditional=unconditional,
    )
    assert len(result.samples) == 2
    for image, row in zip(result.samples, expected, strict=True):
        assert torch.equal(image, tok.DecodeIds(row)[1][0])
    plain = TASKS["text2image"].run(
        dataclasses.replace(ctx, generator=torch.Generator().manual_seed(2)), [CAPTION]
    )
    assert not torch.equal(plain.samples[0], result.samples[0])


@pytest.fixture(scope="module")
def word_level_sp(tmp_path_factory: pytest.TempPathFactory) -> SentencePieceTokenizer:
    """A SentencePiece model whose pieces are whole words only, as the bundled demo tokenizer's."""
    words = ["a", "red", "blue", "cat", "dog", "on", "background"]
    chinese = ["红色", "蓝色", "猫", "狗", "背景上的一只", "的"]
    captions = [
        f"a {c} {a} on a {b} background"
        for c in ("red", "blue")
        for a in ("cat", "dog")
        for b in ("red", "blue")
    ]
    captions += [
        f"{b}背景上的一只{c}的{a}" for c in ("红色", "蓝色") for a in ("猫", "狗") for b in ("红色", "蓝色")
    ]
    folder = tmp_path_factory.mktemp("word_sp")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions),
        model_prefix=str(folder / "words"),
        model_type="bpe",
        vocab_size=100,
        hard_vocab_limit=False,
        user_defined_symbols=chinese + ["▁" + word for word in words],
        minloglevel=2,
    )
    return SentencePieceTokenizer(folder / "words.model")


def test_unknown_words_of_a_word_level_tokenizer_are_whole_words(word_level_sp):
    assert word_level_sp.unknown_words("a red cat on a blue background") == []
    assert word_level_sp.unknown_words("a pink lion on a blue background, pink") == ["pink", "lion", ","]
    assert word_level_sp.unknown_words("粉色背景上的一只红色的狮子") == ["粉色", "狮子"]


def test_unknown_words_of_cog_pretrain_are_the_characters_it_lacks(real_tokenizer, real_sp):
    assert real_tokenizer.unknown_words("一只可爱的猫 a pink cat") == []
    assert real_tokenizer.unknown_words("一只猫🦄 [ROI1] [MASK]*4") == ["🦄"]
    unk = real_sp.unk_id()
    assert unk in real_sp.encode("🦄") and unk not in real_sp.encode("一只可爱的猫")


def test_text2image_cli_post_selects_with_two_caption_models_and_names_unknown_words(
    tiny_cogview, caption_checkpoint, tmp_path, capsys
):
    queries = tmp_path / "input.txt"
    queries.write_text("一只猫🦄\n一只猫\n", encoding="utf-8")
    out = tmp_path / "samples"
    argv = tiny_args(tiny_cogview, "--input-source", str(queries), "--output-path", str(out))
    argv += [
        "--post-select",
        "2",
        "--post-select-load",
        str(tiny_cogview["checkpoint"]),
        str(caption_checkpoint[0]),
        "--guidance-scale",
        "1.5",
    ]
    assert generate_samples.main(argv) == 0
    stdout = capsys.readouterr().out
    notices = [line for line in stdout.splitlines() if "notice" in line]
    assert notices == [
        "line 1: notice: the model does not know '🦄' (read as <unk>); the rest of the prompt is used"
    ]
    assert len(re.findall(r"line \d: post-selection: kept candidate \d, \d of 2 per image", stdout)) == 2
    assert sorted(path.name for path in (out / "一只猫🦄").iterdir()) == ["0.jpg", "1.jpg", "concat.jpg"]


def test_the_load_folder_among_the_scorers_is_the_main_model_not_a_second_copy(
    ctx, tiny_cogview, caption_checkpoint
):
    folders = [str(tiny_cogview["checkpoint"]), str(caption_checkpoint[0])]
    args = get_args([*tiny_args(tiny_cogview, "--post-select", "2", "--post-select-load"), *folders])
    first, second = generate_samples.build_caption_models(
        args, ctx.model, ctx.tokenizer.num_tokens, torch.device("cpu")
    )
    assert first is ctx.model
    assert second is not ctx.model
    assert torch.equal(second.word_embeddings.weight, caption_checkpoint[1].word_embeddings.weight)
    without = get_args(tiny_args(tiny_cogview, "--post-select-load", str(caption_checkpoint[0])))
    assert generate_samples.build_caption_models(without, ctx.model, 0, torch.device("cpu")) == ()  # K = 1


def test_a_missing_second_scorer_is_named_before_anything_loads(tiny_cogview, tmp_path, capsys):
    argv = tiny_args(tiny_cogview, "--post-select", "2", "--output-path", str(tmp_path / "out"))
    argv += ["--input-source", str(tmp_path / "unread.txt")]
    argv += ["--post-select-load", str(tiny_cogview["checkpoint"]), str(tmp_path / "nowhere")]
    assert generate_samples.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --post-select-load: ") and str(tmp_path / "nowhere") in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--generation-task", "image2text", "--guidance-scale", "2"], "--guidance-scale applies to"),
        (["--generation-task", "post-selection", "--post-select", "4"], "--post-select applies to"),
        (["--post-select", "0"], "--post-select: must be at least 1, got 0"),
    ],
)
def test_quality_lever_arguments_are_checked(extra, message, capsys):
    with pytest.raises(SystemExit):
        get_args(extra)
    assert message in capsys.readouterr().err
