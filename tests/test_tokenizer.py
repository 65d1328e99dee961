"""UnifiedTokenizer: the id layout, text and image encoding, query parsing, decoding, and get_tokenizer."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch

import vqvae
from data_utils import sp_tokenizer
from data_utils.sp_tokenizer import TokenizerModelError, TokenizerModelNotFoundError
from data_utils.unified_tokenizer import COMMAND_TOKENS, QueryError, UnifiedTokenizer, get_tokenizer
from data_utils.vqvae_tokenizer import NoImageTokenizerError, resolve_device
from tests.conftest import REAL_SP_MODEL, shape_image

# Reference §6.2, typed out rather than derived.
RELEASED_COMMAND_IDS = {
    "[PAD]": 58192, "[BOI1]": 58193, "[BOI2]": 58194, "[BOI3]": 58195, "[EOI1]": 58196, "[EOI2]": 58197,
    "[EOI3]": 58198, "[ROI1]": 58199, "[ROI2]": 58200, "[ROI3]": 58201, "[SEP]": 58202, "[MASK]": 58203,
    "[CLS]": 58204, "[ENC]": 58205, "[TINY]": 58206, "[SMALL]": 58207, "[BASE]": 58208, "[BIG]": 58209,
    "[POS0]": 58210, "[POS1]": 58211, "[POS2]": 58212, "[POS3]": 58213, "[POS4]": 58214, "[POS5]": 58215,
    "[POS6]": 58216, "[POS7]": 58217, "[POS8]": 58218,
}  # fmt: skip


def test_released_text_examples(real_tokenizer: UnifiedTokenizer) -> None:
    assert real_tokenizer.txt_tokenizer.encode("一个漂亮的女孩") == [1034, 1894, 5081]
    assert real_tokenizer("一个漂亮的女孩") == [9226, 10086, 13273]
    assert real_tokenizer.EncodeAsIds("一只老虎在踢足球") == [
        i + 8192 for i in [15955, 8120, 43373, 45714, 1703]
    ]


def test_released_layout(real_tokenizer: UnifiedTokenizer) -> None:
    assert len(real_tokenizer) == real_tokenizer.num_tokens == 58219
    assert (real_tokenizer.num_image_tokens, real_tokenizer.num_text_tokens) == (8192, 50000)
    assert {name: real_tokenizer[name] for name in COMMAND_TOKENS} == RELEASED_COMMAND_IDS


def test_unknown_command_name(real_tokenizer: UnifiedTokenizer) -> None:
    with pytest.raises(KeyError, match=r"'\[FOO\]' is not a command token"):
        real_tokenizer["[FOO]"]


def test_text_encoding_never_emits_commands(
    real_tokenizer: UnifiedTokenizer, real_sp: spm.SentencePieceProcessor
) -> None:
    text = "[ROI1] 一只猫 [SEP]"
    ids = real_tokenizer(text)
    assert ids == [i + 8192 for i in real_sp.EncodeAsIds(text)]
    assert all(8192 <= i < real_tokenizer.command_start for i in ids)


def test_layout_follows_the_image_tokenizer(tiny_tokenizer: UnifiedTokenizer) -> None:
    assert tiny_tokenizer.num_image_tokens == 64
    assert len(tiny_tokenizer) == 64 + 50000 + 27
    assert tiny_tokenizer["[PAD]"] == 50064 and tiny_tokenizer["[POS8]"] == 50090
    assert tiny_tokenizer("一个漂亮的女孩") == [1034 + 64, 1894 + 64, 5081 + 64]


def test_custom_sentencepiece_shifts_layout(tiny_sp_model: Path) -> None:
    tokenizer = UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=8192, txt_tokenizer_path=tiny_sp_model)
    reference = spm.SentencePieceProcessor(model_file=str(tiny_sp_model))
    assert tokenizer.num_text_tokens == reference.vocab_size() == 300
    assert len(tokenizer) == 8192 + 300 + 27
    assert tokenizer["[PAD]"] == 8492 and tokenizer["[ROI1]"] == 8499
    ids = tokenizer("a red circle 一只猫")
    assert ids == [i + 8192 for i in reference.EncodeAsIds("a red circle 一只猫")]
    assert tokenizer.DecodeIds(ids) == (["a red circle 一只猫"], [])


def test_default_text_model_is_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tokenizer = UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=8192)
    assert tokenizer.txt_tokenizer.path == REAL_SP_MODEL


def test_missing_default_text_model_says_run_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp_tokenizer, "DEFAULT_TXT_TOKENIZER_PATH", tmp_path / "cog-pretrain.model")
    with pytest.raises(
        TokenizerModelNotFoundError, match=r"cog-pretrain\.model is missing; run env/setup\.sh"
    ):
        UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=8192)


def test_missing_or_corrupt_custom_text_model(tmp_path: Path) -> None:
    with pytest.raises(TokenizerModelNotFoundError, match=r"nope\.model does not exist"):
        UnifiedTokenizer(
            None, "cpu", img_tokenizer_num_tokens=8192, txt_tokenizer_path=tmp_path / "nope.model"
        )
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerModelError, match=r"bad\.model is not a SentencePiece model"):
        UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=8192, txt_tokenizer_path=bad)


def test_constructor_errors(tiny_vqvae_path: Path) -> None:
    with pytest.raises(ValueError, match="needs img_tokenizer_path or img_tokenizer_num_tokens"):
        UnifiedTokenizer(None, "cpu")
    with pytest.raises(ValueError, match="has 64 codes, but img_tokenizer_num_tokens is 8192"):
        UnifiedTokenizer(tiny_vqvae_path, "cpu", img_tokenizer_num_tokens=8192)


@pytest.mark.parametrize(
    "text",
    ["一只可爱的小猫坐在沙发上", "A red circle on a blue background.", "a photo of 一只 cat, 在 the sofa 上"],
)
def test_parse_decode_round_trip(real_tokenizer: UnifiedTokenizer, text: str) -> None:
    ids = real_tokenizer.parse_query(f"[ROI1] {text} [BASE] [BOI1] [MASK]*3")
    assert ids[0] == 58199 and ids[-5:] == [58208, 58193, -1, -1, -1]
    assert ids[1:-5] == real_tokenizer(text)
    segments, images = real_tokenizer.DecodeIds([*ids[:-3], 58196, 58202])
    assert segments == ["[ROI1]", text, "[BASE]", "[BOI1]", "[EOI1]", "[SEP]"] and images == []


def test_parse_query_masks(real_tokenizer: UnifiedTokenizer) -> None:
    assert real_tokenizer.parse_query("[MASK] [MASK]*2 [SEP]") == [-1, -1, -1, 58202]
    assert real_tokenizer.parse_query("[ROI1] 猫 [MASK]*1024").count(-1) == 1024
    for bad in ("[MASK]*0", "[MASK]*x", "[MASK]*"):
        with pytest.raises(QueryError, match="must be a positive integer"):
            real_tokenizer.parse_query(f"[ROI1] {bad}")
    assert real_tokenizer.parse_query("[ROI1] [MASK]*1088", max_length=1089).count(-1) == 1088
    with pytest.raises(QueryError, match=r"the query is at least 10000000000 tokens long, but the model"):
        real_tokenizer.parse_query("[ROI1] [MASK]*9999999999", max_length=1089)  # refused, not allocated
    with pytest.raises(QueryError, match=r"at least 1090 tokens long, but the model takes at most 1089"):
        real_tokenizer.parse_query("[ROI1] [MASK]*1000 [MASK]*89", max_length=1089)


def test_readme_example_decodes_a_query_and_a_filled_sample(tiny_tokenizer: UnifiedTokenizer) -> None:
    query = tiny_tokenizer.parse_query("[ROI1] 一只猫 [TINY] [BOI1] [MASK]*64")
    assert tiny_tokenizer.DecodeIds(query[:-64]) == (["[ROI1]", "一只猫", "[TINY]", "[BOI1]"], [])
    filled = query[:-64] + list(range(64))  # what filling_sequence hands back: no -1 left
    segments, images = tiny_tokenizer.DecodeIds(filled)
    assert segments == ["[ROI1]", "一只猫", "[TINY]", "[BOI1]"] and [image.shape for image in images] == [
        (1, 3, 64, 64)
    ]


def test_parse_query_rejoins_text_between_commands(real_tokenizer: UnifiedTokenizer) -> None:
    ids = real_tokenizer.parse_query("一只 老虎 [SEP] in  the   grass")
    assert ids == [*real_tokenizer("一只 老虎"), 58202, *real_tokenizer("in  the   grass")]


def _save_image(path: Path, index: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape_image(index, size)[0].save(path)
    return path


def test_parse_query_images(
    tiny_tokenizer: UnifiedTokenizer, tiny_vqvae: vqvae.VQVAE, tmp_path: Path
) -> None:
    path = _save_image(tmp_path / "odd]dir" / "cat.png", 3)  # a ']' in the path is fine
    codes = vqvae.img2code(tiny_vqvae, vqvae.read_img(path, 64))[0].tolist()  # [64]
    assert len(codes) == 64 and len(set(codes)) > 5
    base, boi, eoi = tiny_tokenizer["[TINY]"], tiny_tokenizer["[BOI1]"], tiny_tokenizer["[EOI1]"]
    assert tiny_tokenizer.parse_query(f"[TINY] [BOI1] [Image]{path} [EOI1]", img_size=64) == [
        base,
        boi,
        *codes,
        eoi,
    ]
    partial = tiny_tokenizer.parse_query(f"[Image3]{path}", img_size=64)
    assert partial == codes[:3] + [-1] * 61
    text_first = tiny_tokenizer.parse_query(f"一只猫 [Image0]{path}", img_size=64)
    assert text_first == tiny_tokenizer("一只猫") + [-1] * 64


def test_parse_query_image_errors(
    tiny_tokenizer: UnifiedTokenizer, real_tokenizer: UnifiedTokenizer, tmp_path: Path
) -> None:
    for bad in ("[Image]", "[Imagex]a.png", "[Image3"):
        with pytest.raises(QueryError, match=r"expected \[Image\]path or \[ImageN\]path"):
            tiny_tokenizer.parse_query(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        tiny_tokenizer.parse_query(f"[Image]{tmp_path / 'missing.png'}")
    with pytest.raises(NoImageTokenizerError, match="no image model"):
        real_tokenizer.parse_query(f"[Image]{_save_image(tmp_path / 'x.png', 0)}")


def test_encode_image_tensor(
    tiny_tokenizer: UnifiedTokenizer, tiny_vqvae: vqvae.VQVAE, real_tokenizer
) -> None:
    image = vqvae.image_to_tensor(shape_image(5)[0], 64)  # [1, 3, 64, 64]
    expected = vqvae.img2code(tiny_vqvae, image)  # [1, 64]
    assert torch.equal(tiny_tokenizer(image), expected)
    assert torch.equal(tiny_tokenizer(image[0]), expected)  # a 3-D image gets a batch dim
    with pytest.raises(NoImageTokenizerError, match="no image model"):
        real_tokenizer(image)


def test_decode_ids_with_images(tiny_tokenizer: UnifiedTokenizer, tiny_vqvae: vqvae.VQVAE) -> None:
    codes = torch.arange(64) % 64
    ids = [tiny_tokenizer["[ROI1]"], *tiny_tokenizer("一只猫"), *tiny_tokenizer.wrap_code(codes.tolist())]
    ids += [*tiny_tokenizer.wrap_code(codes.flip(0).tolist(), idx=2)[2:-1]]  # an unterminated second image
    segments, images = tiny_tokenizer.DecodeIds(torch.tensor(ids))
    assert segments == ["[ROI1]", "一只猫", "[TINY]", "[BOI1]", "[EOI1]"]
    assert len(images) == 2
    torch.testing.assert_close(images[0], vqvae.code2img(tiny_vqvae, codes[None]))
    torch.testing.assert_close(images[1], vqvae.code2img(tiny_vqvae, codes.flip(0)[None]))


def test_decode_ids_rejects_malformed_sequences(tiny_tokenizer: UnifiedTokenizer) -> None:
    with pytest.raises(ValueError, match=r"Id 50091 at position 1 is outside the vocabulary \[0, 50091\)"):
        tiny_tokenizer.DecodeIds([tiny_tokenizer["[ROI1]"], 50091])
    with pytest.raises(ValueError, match=r"Position 1 holds -1, a position still to generate .*filling_seq"):
        tiny_tokenizer.DecodeIds(tiny_tokenizer.parse_query("[ROI1] [MASK]"))
    with pytest.raises(ValueError, match=r"Id -2 at position 0 is outside"):
        tiny_tokenizer.DecodeIds([-2])
    with pytest.raises(ValueError, match="segment of 5 codes is not a square grid"):
        tiny_tokenizer.DecodeIds([1, 2, 3, 4, 5, tiny_tokenizer["[EOI1]"]])


@pytest.mark.parametrize(
    ("side", "size_token"), [(8, "[TINY]"), (16, "[SMALL]"), (32, "[BASE]"), (64, "[BIG]")]
)
def test_wrap_code_size_tokens(real_tokenizer: UnifiedTokenizer, side: int, size_token: str) -> None:
    code = list(range(side * side))
    wrapped = real_tokenizer.wrap_code(code)
    assert wrapped == [RELEASED_COMMAND_IDS[size_token], 58193, *code, 58196]
    as_array = real_tokenizer.wrap_code(np.array(code, dtype=np.int32), idx=2)
    assert isinstance(as_array, np.ndarray) and as_array.tolist() == [
        RELEASED_COMMAND_IDS[size_token],
        58194,
        *code,
        58197,
    ]
    as_tensor = real_tokenizer.wrap_code(torch.tensor(code).view(side, side), idx=3)
    assert isinstance(as_tensor, torch.Tensor)
    assert as_tensor.tolist() == [RELEASED_COMMAND_IDS[size_token], 58195, *code, 58198]


def test_wrap_code_errors(real_tokenizer: UnifiedTokenizer) -> None:
    with pytest.raises(ValueError, match="10 codes is not a square grid"):
        real_tokenizer.wrap_code(list(range(10)))
    with pytest.raises(ValueError, match="No size token for a 2×2 code grid"):
        real_tokenizer.wrap_code([0, 1, 2, 3])
    with pytest.raises(ValueError, match="idx must be 1, 2 or 3"):
        real_tokenizer.wrap_code(list(range(64)), idx=4)


def test_read_img_passthrough(tiny_tokenizer: UnifiedTokenizer, tmp_path: Path) -> None:
    path = _save_image(tmp_path / "a.png", 1, size=80)
    torch.testing.assert_close(tiny_tokenizer.read_img(path, 64), vqvae.read_img(path, 64))


def test_get_tokenizer_singleton(fresh_tokenizer_singleton: None, real_tokenizer: UnifiedTokenizer) -> None:
    with pytest.raises(RuntimeError, match=r"call get_tokenizer\(args\)"):
        get_tokenizer()
    args = argparse.Namespace(img_tokenizer_path=None, img_tokenizer_num_tokens=8192, device="cpu")
    built = get_tokenizer(args)
    assert len(built) == 58219 and built.device == torch.device("cpu")
    assert get_tokenizer() is built and get_tokenizer(args) is built
    assert get_tokenizer(tokenizer=real_tokenizer) is real_tokenizer and get_tokenizer() is real_tokenizer


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(1) == torch.device("cuda", 1)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_device(None) == torch.device("cuda", 3)
