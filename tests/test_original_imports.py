"""The original CogView's import paths and call forms keep working, so its scripts and notebooks run."""

import argparse
import importlib

import pytest
import torch

from tests.test_filling import sampling_args, tiny_gpt

ORIGINAL_NAMES = {
    "generation": ["filling_sequence", "get_batch", "inverse_prompt_score", "magnify"],
    "generation.sampling": ["filling_sequence", "get_batch", "top_k_logits", "inverse_prompt_score"],
    "generation.magnify": ["magnify"],
    "vqvae": ["new_model", "img2code", "code2img", "VQVAE"],
    "vqvae.api": ["new_model", "img2code", "code2img"],
    "vqvae.vqvae_zc": ["VQVAE", "Encoder", "Decoder", "Quantize"],
    "mpu.sparse_transformer": [
        "LayerNorm",
        "GPT2ParallelSelfAttention",
        "GPT2ParallelMLP",
        "GPT2ParallelTransformerLayer",
        "GPT2ParallelTransformer",
        "gelu",
        "unscaled_init_method",
        "scaled_init_method",
        "standard_attention",
        "sparse_attention",
        "sparse_attention_inference",
    ],
    "mpu": ["GPT2ParallelTransformer", "VocabParallelEmbedding", "initialize_model_parallel"],
    "model": ["GPT2Model", "gpt2_get_params_for_weight_decay_optimization"],
    "data_utils": ["get_tokenizer", "TextCodeTemplate", "make_loaders", "detect_new_datasets"],
    "learning_rates": ["AnnealingLR"],
    "utils": ["Timers", "save_checkpoint", "load_checkpoint", "print_rank_0"],
}


@pytest.mark.parametrize("module", sorted(ORIGINAL_NAMES))
def test_original_import_paths(module):
    imported = importlib.import_module(module)
    missing = [name for name in ORIGINAL_NAMES[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"


def test_moved_names_are_the_same_objects():
    import generation
    import generation.filling
    import generation.scoring
    import mpu.transformer
    import vqvae.model
    from generation import sampling
    from mpu import sparse_transformer
    from vqvae import vqvae_zc

    assert sampling.filling_sequence is generation.filling.filling_sequence
    assert sampling.inverse_prompt_score is generation.scoring.inverse_prompt_score
    assert sampling.get_batch is generation.get_batch
    assert vqvae_zc.VQVAE is vqvae.model.VQVAE
    assert sparse_transformer.GPT2ParallelTransformer is mpu.transformer.GPT2ParallelTransformer
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        sampling.nothing_here  # noqa: B018


def test_get_batch_gives_the_causal_mask_and_positions():
    from generation import get_batch

    tokens, mask, positions = get_batch(torch.tensor([5, 6, 7]), "cpu", argparse.Namespace(fp16=True))
    assert tokens.tolist() == [[5, 6, 7]] and positions.tolist() == [[0, 1, 2]]
    assert mask.dtype == torch.float16 and mask.tolist() == [[[[1, 0, 0], [1, 1, 0], [1, 1, 1]]]]


def test_positional_and_keyword_constructors_build_the_same_model():
    from model import GPT2Config, GPT2Model

    torch.manual_seed(0)
    positional = GPT2Model(2, 128, 32, 4, 0.0, 0.0, 0.0, 16, 0, False, 1, True, 4)
    torch.manual_seed(0)
    keyword = GPT2Model(
        num_layers=2,
        vocab_size=128,
        hidden_size=32,
        num_attention_heads=4,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=16,
        max_memory_length=0,
        checkpoint_activations=False,
        query_window=4,
    )
    assert positional.config == keyword.config
    assert positional.config.transformer.query_window == 4 and positional.config.transformer.num_pivot == 768
    assert all(
        torch.equal(a, b)
        for a, b in zip(positional.state_dict().values(), keyword.state_dict().values(), strict=True)
    )
    assert GPT2Model(keyword.config).config is keyword.config
    assert isinstance(keyword.config, GPT2Config)
    with pytest.raises(TypeError, match="multiple values for argument 'vocab_size'"):
        GPT2Model(2, 128, vocab_size=128)
    with pytest.raises(TypeError, match="unexpected keyword argument 'query_windows'"):
        GPT2Model(2, 128, 32, 4, 0.0, 0.0, 0.0, 16, 0, False, query_windows=4)


def test_inverse_prompt_score_with_the_original_args_argument(tiny_tokenizer):
    from data_utils import get_tokenizer
    from generation import inverse_prompt_score

    tok = tiny_tokenizer
    model = tiny_gpt(len(tok)).eval()
    row = [tok["[TINY]"], tok["[BOI1]"], *range(64), tok["[EOI1]"], tok["[ROI1]"], *tok.EncodeAsIds("一只猫")]
    get_tokenizer(tokenizer=tok)
    explicit = inverse_prompt_score(model, [row], tok)
    assert torch.equal(inverse_prompt_score(model, [row], argparse.Namespace()), explicit)
    assert torch.equal(inverse_prompt_score(model, [row]), explicit)


def test_filling_sequence_takes_the_original_args(tiny_tokenizer):
    from generation import SamplingConfig, filling_sequence

    model = tiny_gpt(len(tiny_tokenizer)).eval()
    seq = torch.tensor([tiny_tokenizer["[ROI1]"], *tiny_tokenizer.EncodeAsIds("猫"), -1, -1])
    args = sampling_args(batch_size=3, max_inference_batch_size=2, top_k=1)
    from_args = filling_sequence(model, seq, args, tokenizer=tiny_tokenizer)
    from_config = filling_sequence(model, seq, SamplingConfig.of(args), tokenizer=tiny_tokenizer)
    assert from_args.shape == (3, len(seq)) and torch.equal(from_args, from_config)


def test_timers_accumulate_and_log(capsys, monkeypatch):
    from common import timers as timers_module
    from utils import Timers

    clock = iter([10.0, 10.5, 20.0, 20.25, 30.0, 30.125])
    monkeypatch.setattr(timers_module.time, "perf_counter", lambda: next(clock))
    timers = Timers()
    for _ in range(2):
        timers("forward").start()
        timers("forward").stop()
    timers("backward").start()
    timers("backward").stop()
    assert (
        timers.log(["forward", "backward"], normalizer=0.5)
        == "time (ms) | forward: 1500.00 | backward: 250.00"
    )
    assert capsys.readouterr().out == "time (ms) | forward: 1500.00 | backward: 250.00\n"
    assert timers("forward").elapsed() == 0.0  # log reset it
    with pytest.raises(AssertionError, match="not started"):
        timers("backward").stop()
