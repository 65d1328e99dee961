"""Checkpoint files: round trips, atomic saves, dtype/key/vocab conversion, safe loading, clear errors."""

import argparse
import copy
import os
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from model import GPT2Model
from model.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    read_tracker,
    save_checkpoint,
)
from model.partition import EMBEDDING_KEY, SAT_EMBEDDING_KEY, padded_vocab_size

NUM_TOKENS = 300  # padded to 384 rows at model-parallel size 1 and to 512 at size 2
SHARD = "mp_rank_00_model_states.pt"
TRACKER = "latest_checkpointed_iteration.txt"
TINY_SIZES = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "max_sequence_length": 16}


def tiny_model(
    vocab_size: int = padded_vocab_size(NUM_TOKENS, 1),
    seed: int = 0,
    perturb: bool = True,
    parallel_output: bool = True,
) -> GPT2Model:
    """A 2-layer, hidden-32, 4-head CogView GPT; ``perturb`` makes every tensor (LayerNorms too) distinct."""
    torch.manual_seed(seed)
    model = GPT2Model(
        vocab_size=vocab_size,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_memory_length=0,
        checkpoint_activations=False,
        parallel_output=parallel_output,
        **TINY_SIZES,
    )
    if perturb:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> GPT2Model:
    return tiny_model()


def assert_state_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


def write_payload(directory: Path, payload: dict, iteration: str = "5", tracker: str = TRACKER) -> Path:
    """A checkpoint written by hand (another tool's file), without save_checkpoint."""
    (directory / iteration).mkdir(parents=True)
    (directory / tracker).write_text(iteration)
    torch.save(payload, directory / iteration / SHARD)
    return directory / iteration / SHARD


def test_save_then_load_round_trips_in_the_released_layout(tmp_path, model):
    path = save_checkpoint(model, tmp_path, 7, client_state={"client_lr_scheduler": {"num_iters": 100}})
    assert path == tmp_path / "7" / SHARD
    assert (tmp_path / TRACKER).read_text() == "7"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["7", TRACKER]
    assert [f.name for f in (tmp_path / "7").iterdir()] == [SHARD]  # no temporary file left behind
    payload = torch.load(path, weights_only=True)
    assert payload["iteration"] == 7 and payload["client_lr_scheduler"] == {"num_iters": 100}
    assert_state_equal(payload["module"], model.state_dict())

    other = tiny_model(seed=1)
    assert not torch.equal(other.word_embeddings.weight, model.word_embeddings.weight)
    assert load_checkpoint(other, tmp_path) == 7
    assert_state_equal(other.state_dict(), model.state_dict())


def test_tracker_is_renamed_into_place_after_the_shard(tmp_path, model, monkeypatch):
    renamed = []
    real_replace = os.replace

    def recording_replace(source, target):
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    save_checkpoint(model, tmp_path, 3)
    assert renamed == [SHARD, TRACKER]


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, model, monkeypatch):
    save_checkpoint(model, tmp_path, 1)
    real_save = torch.save

    def crash_halfway(obj, file):
        real_save(obj, file)
        file.truncate(file.tell() // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_halfway)
    changed = tiny_model(seed=2)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(changed, tmp_path, 2)
    monkeypatch.undo()
    assert (tmp_path / TRACKER).read_text() == "1"
    assert list((tmp_path / "2").iterdir()) == []  # neither the partial temporary file nor a shard
    restored = tiny_model(seed=3)
    assert load_checkpoint(restored, tmp_path) == 1
    assert_state_equal(restored.state_dict(), model.state_dict())


@pytest.mark.parametrize("tracker", [TRACKER, "latest"])
@pytest.mark.parametrize("iteration", ["142000", "release"])
def test_both_tracker_names_and_release_folder(tmp_path, model, tracker, iteration):
    save_checkpoint(model, tmp_path, iteration)
    (tmp_path / TRACKER).rename(tmp_path / tracker)
    assert read_tracker(tmp_path) == iteration
    other = tiny_model(seed=1)
    assert load_checkpoint(other, tmp_path) == (142000 if iteration == "142000" else "release")
    assert_state_equal(other.state_dict(), model.state_dict())


@pytest.mark.parametrize(
    ("disk_dtype", "model_dtype"), [(torch.float16, torch.float32), (torch.float32, torch.bfloat16)]
)
def test_weights_are_cast_to_the_model_dtype(tmp_path, model, disk_dtype, model_dtype):
    on_disk = copy.deepcopy(model).to(disk_dtype)
    save_checkpoint(on_disk, tmp_path, 4)
    loaded = tiny_model(seed=1).to(model_dtype)
    load_checkpoint(loaded, tmp_path)
    for key, tensor in on_disk.state_dict().items():
        assert loaded.state_dict()[key].dtype == model_dtype
        assert torch.equal(loaded.state_dict()[key], tensor.to(model_dtype)), key


def test_sat_embedding_key_spelling_is_accepted(tmp_path, model):
    module = {(SAT_EMBEDDING_KEY if k == EMBEDDING_KEY else k): v for k, v in model.state_dict().items()}
    write_payload(tmp_path, {"module": module}, tracker="latest")
    other = tiny_model(seed=1)
    load_checkpoint(other, tmp_path)
    assert_state_equal(other.state_dict(), model.state_dict())


def test_vocab_is_zero_padded_to_the_model_rows(tmp_path, model):
    save_checkpoint(model, tmp_path, 8)  # 384 rows: the MP=1 padding
    wider = tiny_model(vocab_size=padded_vocab_size(NUM_TOKENS, 2), seed=1)  # 512 rows: the MP=2 padding
    load_checkpoint(wider, tmp_path)
    assert torch.equal(wider.word_embeddings.weight[:384], model.word_embeddings.weight)
    assert torch.equal(wider.word_embeddings.weight[384:], torch.zeros(128, 32))
    ids = torch.randint(0, NUM_TOKENS, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(wider(ids, positions, 0)[0][..., :384], model(ids, positions, 0)[0])


def _deepspeed_like_client_state() -> dict:
    """What DeepSpeed and CogView's training loop store beside 'module' (reference §3.11)."""
    return {
        "iteration": 5,
        "global_steps": 5,
        "skipped_steps": 0,
        "lr_scheduler": None,
        "csr_tensor_module_names": set(),
        "param_shapes": OrderedDict(a=torch.Size([2, 3])),
        "ds_config": {"train_micro_batch_size_per_gpu": 2},
        "ds_version": "0.19.8",
        "client_lr_scheduler": {"warmup_iter": 1, "decay_style": "cosine", "decay_ratio": 0.1},
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "numpy_scalar": np.float64(0.5),
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": {"model-parallel-rng": torch.get_rng_state()},
    }


@pytest.mark.parametrize("numpy_generation", ["numpy 2", "numpy 1"])
def test_deepspeed_client_state_with_numpy_rng_loads_safely(tmp_path, model, numpy_generation):
    path = write_payload(tmp_path, {"module": model.state_dict(), **_deepspeed_like_client_state()})
    if numpy_generation == "numpy 1":  # the 2021 files name numpy's pickling helpers numpy.core.*
        torch.save(torch.load(path, weights_only=False), path, _use_new_zipfile_serialization=False)
        data = path.read_bytes()
        assert b"numpy._core" in data
        path.write_bytes(data.replace(b"numpy._core", b"numpy.core"))
    other = tiny_model(seed=1)
    assert load_checkpoint(other, tmp_path) == 5
    assert_state_equal(other.state_dict(), model.state_dict())


def test_unknown_pickled_objects_need_trust(tmp_path, model):
    write_payload(tmp_path, {"module": model.state_dict(), "args": argparse.Namespace(lr=1e-4)})
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace.*trust_checkpoint=True") as error:
        load_checkpoint(tiny_model(seed=1), tmp_path)
    assert "\n" not in str(error.value)
    other = tiny_model(seed=1)
    load_checkpoint(other, tmp_path, trust_checkpoint=True)
    assert_state_equal(other.state_dict(), model.state_dict())


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _without(key: str):
    return lambda module: {k: v for k, v in module.items() if k != key}


def _reshaped(key: str, shape: tuple[int, ...]):
    return lambda module: {k: (torch.zeros(shape) if k == key else v) for k, v in module.items()}


QKV_BIAS = "transformer.layers.1.attention.query_key_value.bias"
DENSE_KEY = "transformer.layers.0.attention.dense.weight"


@pytest.mark.parametrize(
    ("edit_module", "error_type", "pattern"),
    [
        (_without(QKV_BIAS), CheckpointError, rf"{SHARD} lacks key '{QKV_BIAS}' that the model needs"),
        (
            lambda m: {**m, "extra.weight": torch.ones(1)},
            CheckpointError,
            rf"{SHARD} has unexpected key 'extra.weight'",
        ),
        (
            _reshaped(DENSE_KEY, (32, 8)),
            CheckpointError,
            rf"{SHARD}: key '{DENSE_KEY}' has shape \[32, 8\] in the checkpoint but \[32, 32\] in the model$",
        ),
        (
            _reshaped(EMBEDDING_KEY, (512, 32)),
            CheckpointError,
            r"has shape \[512, 32\] in the checkpoint but \[384, 32\] .*padding depends on the model-par",
        ),
    ],
    ids=["missing key", "unexpected key", "wrong shape", "wrong vocab rows"],
)
def test_bad_state_dict_gives_one_line_error(tmp_path, model, edit_module, error_type, pattern):
    write_payload(tmp_path, {"module": edit_module(model.state_dict())})
    with pytest.raises(error_type, match=pattern) as error:
        load_checkpoint(tiny_model(seed=1), tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"num_layers": 3}, "the checkpoint has 2 layers, the model 3: pass --num-layers 2"),
        ({"hidden_size": 64}, "the checkpoint has hidden size 32, the model 64: pass --hidden-size 32"),
        (
            {"max_sequence_length": 32},
            "the checkpoint has 16 position embeddings, the model 32: pass --max-position-embeddings 16",
        ),
    ],
    ids=["layers", "hidden", "positions"],
)
def test_wrong_model_size_names_the_argument(tmp_path, model, sizes, message):
    save_checkpoint(model, tmp_path, 5)
    options = {**TINY_SIZES, **sizes}
    torch.manual_seed(0)
    other = GPT2Model(
        vocab_size=padded_vocab_size(NUM_TOKENS, 1),
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_memory_length=0,
        checkpoint_activations=False,
        **options,
    )
    with pytest.raises(CheckpointError, match=rf"{SHARD}: {message}$"):
        load_checkpoint(other, tmp_path)


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_as_such_not_as_corruption(tmp_path, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_payload(tmp_path / "ckpt", {"module": model.state_dict(), "payload": _RunsCode()})
    with pytest.raises(
        CheckpointError, match=r"holds a pickled (posix|os)\.system, which safe loading refuses; pass"
    ) as error:
        load_checkpoint(tiny_model(seed=1), tmp_path / "ckpt")
    assert "truncated" not in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "pwned").exists()


def test_strict_false_tolerates_key_differences_but_not_shapes(tmp_path, model):
    write_payload(
        tmp_path, {"module": {**_without(QKV_BIAS)(model.state_dict()), "extra.weight": torch.ones(1)}}
    )
    other = tiny_model(seed=1)
    load_checkpoint(other, tmp_path, strict=False)
    assert torch.equal(other.word_embeddings.weight, model.word_embeddings.weight)
    torch.save({"module": _reshaped(DENSE_KEY, (32, 8))(model.state_dict())}, tmp_path / "5" / SHARD)
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(other, tmp_path, strict=False)


def _setup_missing_directory(root: Path, model) -> Path:
    return root / "nowhere"


def _setup_missing_tracker(root: Path, model) -> Path:
    save_checkpoint(model, root, 5)
    (root / TRACKER).unlink()
    return root


def _setup_bad_tracker(root: Path, model) -> Path:
    save_checkpoint(model, root, 5)
    (root / TRACKER).write_text("global_step5")
    return root


def _setup_missing_iteration_folder(root: Path, model) -> Path:
    save_checkpoint(model, root, 5)
    (root / TRACKER).write_text("6")
    return root


def _setup_empty_iteration_folder(root: Path, model) -> Path:
    save_checkpoint(model, root, 5)
    (root / "5" / SHARD).unlink()
    return root


def _setup_gap_in_shards(root: Path, model) -> Path:
    save_checkpoint(model, root, 5)
    (root / "5" / "mp_rank_02_model_states.pt").write_bytes((root / "5" / SHARD).read_bytes())
    return root


def _setup_missing_last_shard(root: Path, model) -> Path:
    payload = {"module": model.state_dict(), "mp_world_size": 2}  # the file says there were 2 ranks
    write_payload(root, payload)
    return root


def _setup_truncated_shard(root: Path, model) -> Path:
    _truncate(save_checkpoint(model, root, 5))
    return root


def _setup_garbage_shard(root: Path, model) -> Path:
    save_checkpoint(model, root, 5)
    (root / "5" / SHARD).write_bytes(b"not a checkpoint" * 10)
    return root


def _setup_no_module(root: Path, model) -> Path:
    write_payload(root, {"model": model.state_dict()})
    return root


@pytest.mark.parametrize(
    ("setup", "error_type", "pattern"),
    [
        (_setup_missing_directory, CheckpointNotFoundError, r"checkpoint directory .*nowhere does not exist"),
        (_setup_missing_tracker, CheckpointNotFoundError, rf"has no tracker file \({TRACKER} or latest\)"),
        (
            _setup_bad_tracker,
            CheckpointError,
            r"tracker .* holds 'global_step5', expected an iteration number",
        ),
        (
            _setup_missing_iteration_folder,
            CheckpointNotFoundError,
            r"iteration folder .*/6 named by the tracker",
        ),
        (
            _setup_empty_iteration_folder,
            CheckpointNotFoundError,
            rf"/5 holds no model-states file; expected .*{SHARD}",
        ),
        (_setup_gap_in_shards, CheckpointNotFoundError, r"shard .*/5/mp_rank_01_model_states\.pt is missing"),
        (
            _setup_missing_last_shard,
            CheckpointNotFoundError,
            r"mp_rank_01_model_states\.pt is missing .*mp_world_size 2",
        ),
        (
            _setup_truncated_shard,
            CheckpointError,
            rf"cannot read .*/5/{SHARD}: the file is truncated or corrupt",
        ),
        (
            _setup_garbage_shard,
            CheckpointError,
            rf"cannot read .*/5/{SHARD}: the file is truncated or corrupt",
        ),
        (_setup_no_module, CheckpointError, rf"{SHARD} has no 'module' entry \(found \['model'\]\)"),
    ],
    ids=lambda value: value.__name__.removeprefix("_setup_") if callable(value) else None,
)
def test_missing_or_broken_files_give_one_line_errors(tmp_path, model, setup, error_type, pattern):
    directory = setup(tmp_path, model)
    with pytest.raises(error_type, match=pattern) as error:
        load_checkpoint(tiny_model(seed=1), directory)
    assert "\n" not in str(error.value)


def test_client_state_cannot_replace_the_weights(tmp_path, model):
    with pytest.raises(ValueError, match="must not contain 'module'"):
        save_checkpoint(model, tmp_path, 1, client_state={"module": {}})
    assert not (tmp_path / TRACKER).exists()
