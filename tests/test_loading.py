"""Bounded-memory loading: a meta-device model filled from a memory-mapped checkpoint, and ``--offload``."""

from pathlib import Path

import pytest
import torch

import mpu
from arguments import get_args
from generation.runtime import build_model
from model import GPT2Model
from model.checkpoint import (
    CheckpointError,
    _release_file_pages,
    is_memory_mappable,
    load_checkpoint,
    save_checkpoint,
)
from model.partition import padded_vocab_size
from tests.helpers.distributed import run_distributed
from tests.test_checkpoint import NUM_TOKENS, SHARD, tiny_model, write_payload

ITERATION = 3


def meta_model(vocab_size: int = padded_vocab_size(NUM_TOKENS, 1), dtype=torch.float32) -> GPT2Model:
    """The same tiny architecture as ``tiny_model``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return tiny_model(vocab_size, perturb=False).to(dtype)


def plain_load(path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict read the simple way: the whole file into memory, no memory map."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=False)["module"]


def logits(model: GPT2Model, device: str = "cpu") -> torch.Tensor:
    ids = torch.randint(0, NUM_TOKENS, (2, 12), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        return model(ids, torch.arange(12, device=device).expand(2, 12), 0)[0].float().cpu()  # [b, s, V]


@pytest.fixture(scope="module")
def half_checkpoint(tmp_path_factory) -> Path:
    """An fp16 checkpoint of the tiny model, written by ``save_checkpoint`` (like the released files)."""
    directory = tmp_path_factory.mktemp("half")
    save_checkpoint(tiny_model().half(), directory, ITERATION)
    return directory


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_meta_model_gets_the_tensors_of_a_plain_load(half_checkpoint, dtype):
    model = meta_model(dtype=dtype)
    assert load_checkpoint(model, half_checkpoint) == ITERATION
    expected = plain_load(half_checkpoint / str(ITERATION) / SHARD)
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, tensor in expected.items():
        assert state[key].device.type == "cpu" and state[key].dtype == dtype, key
        assert torch.equal(state[key], tensor.to(dtype)), key
    # real parameters, with the model-parallel attributes that clipping and resharding read
    qkv = model.transformer.layers[0].attention.query_key_value.weight
    assert isinstance(qkv, torch.nn.Parameter) and qkv.requires_grad
    assert (qkv.model_parallel, qkv.partition_dim, qkv.partition_stride) == (True, 0, 3)
    assert torch.equal(logits(model), logits(tiny_model().half().to(dtype)))


def test_saved_checkpoints_are_memory_mapped_and_legacy_files_still_load(tmp_path, half_checkpoint):
    saved = half_checkpoint / str(ITERATION) / SHARD
    assert is_memory_mappable(saved)
    torch.load(saved, weights_only=True, mmap=True)  # refuses files that are not in the zip format
    legacy = tmp_path / "legacy"
    write_payload(legacy, {"module": plain_load(saved)}, iteration=str(ITERATION))
    torch.save(
        {"module": plain_load(saved)}, legacy / str(ITERATION) / SHARD, _use_new_zipfile_serialization=False
    )
    assert not is_memory_mappable(legacy / str(ITERATION) / SHARD)
    model = meta_model()
    load_checkpoint(model, legacy)
    for key, tensor in plain_load(saved).items():
        assert torch.equal(model.state_dict()[key], tensor.float()), key


def test_released_file_pages_are_read_back_unchanged(half_checkpoint):
    path = half_checkpoint / str(ITERATION) / SHARD
    mapped = torch.load(path, weights_only=True, mmap=True)["module"]
    for tensor in mapped.values():
        tensor.float().sum()  # touch every page
        _release_file_pages(tensor)
    for key, tensor in plain_load(path).items():
        assert torch.equal(mapped[key], tensor), key


def test_materialised_model_is_filled_in_place(half_checkpoint):
    model = tiny_model(seed=1)
    parameters = list(model.parameters())  # what an optimizer holds
    load_checkpoint(model, half_checkpoint)
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    for key, tensor in plain_load(half_checkpoint / str(ITERATION) / SHARD).items():
        assert torch.equal(model.state_dict()[key], tensor.float()), key


def test_meta_model_cannot_skip_a_missing_key(tmp_path, half_checkpoint):
    state = plain_load(half_checkpoint / str(ITERATION) / SHARD)
    del state["transformer.final_layernorm.bias"]
    write_payload(tmp_path, {"module": state})
    with pytest.raises(
        CheckpointError,
        match=r"lacks key 'transformer.final_layernorm.bias', which a model built on the meta",
    ):
        load_checkpoint(meta_model(), tmp_path, strict=False)


def _meta_load_at_mp2(rank, world_size, directory: Path) -> torch.Tensor:
    mpu.initialize_model_parallel(2)
    with torch.device("meta"):
        model = tiny_model(padded_vocab_size(NUM_TOKENS, 2), perturb=False, parallel_output=False)
    load_checkpoint(model, directory)  # one fp16 MP=1 file: padded, split and converted on the fly
    return logits(model)[..., :NUM_TOKENS]


def test_meta_model_at_mp2_splits_an_mp1_file_on_the_fly(half_checkpoint):
    reference = logits(tiny_model().half().float())[..., :NUM_TOKENS]
    for result in run_distributed(_meta_load_at_mp2, 2, half_checkpoint):
        torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-5)


def _generation_args(directory: Path, *extra: str):
    return get_args(
        [
            "--load",
            str(directory),
            "--num-layers",
            "2",
            "--hidden-size",
            "32",
            "--num-attention-heads",
            "4",
            "--max-position-embeddings",
            "16",
            "--device",
            "cpu",
            *extra,
        ]
    )


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_offload_loads_and_gives_the_same_logits(half_checkpoint, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    plain = build_model(_generation_args(half_checkpoint), NUM_TOKENS, torch.device("cpu"))
    args = _generation_args(half_checkpoint, "--offload")
    offloaded = build_model(args, NUM_TOKENS, torch.device(device))
    layer_weight = offloaded.transformer.layers[0].mlp.dense_h_to_4h.weight
    assert offloaded.word_embeddings.weight.device.type == device
    assert layer_weight.device.type == "cpu"
    assert offloaded.transformer.layers[0]._forward_pre_hooks  # the layer moves in when it runs
    torch.testing.assert_close(logits(offloaded, device), logits(plain), rtol=1e-4, atol=1e-4)
    assert layer_weight.device.type == "cpu"  # and back out afterwards
