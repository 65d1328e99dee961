"""Model-parallel partitioning and resharding: split/merge are exact inverses; resharded weights run at MP=2.

The key test saves an MP=1 model, reshards it to 2 with ``tools/reshard_checkpoint.py``, runs it in two
gloo processes and compares the logits with MP=1; then merges the MP=2 shards back and compares tensors.
"""

import re
import shutil
from pathlib import Path

import pytest
import torch

import mpu
from model.checkpoint import CheckpointError, load_checkpoint, read_shard, save_checkpoint
from model.partition import (
    EMBEDDING_KEY,
    SAT_EMBEDDING_KEY,
    Partition,
    PartitionError,
    merge_state_dicts,
    padded_vocab_size,
    partition_of,
    resize_vocab,
    split_state_dict,
)
from tests.helpers.distributed import run_distributed
from tests.test_checkpoint import NUM_TOKENS, SHARD, TRACKER, assert_state_equal, tiny_model
from tools.reshard_checkpoint import main as reshard_main

HIDDEN = 32
ROWS_MP1 = padded_vocab_size(NUM_TOKENS, 1)  # 384
ROWS_MP2 = padded_vocab_size(NUM_TOKENS, 2)  # 512
QKV = "transformer.layers.{}.attention.query_key_value.{}"
DENSE = "transformer.layers.{}.attention.dense.weight"
LN = "transformer.layers.0.input_layernorm.weight"
ITERATION = 10
FRESH_SEED = 123


def test_padded_vocab_size_depends_on_model_parallel_size():
    assert padded_vocab_size(58219, 1) == 58240
    for size, shard_rows in ((2, 29184), (4, 14592), (8, 7296)):
        assert padded_vocab_size(58219, size) == 58368 == shard_rows * size
    assert (ROWS_MP1, ROWS_MP2) == (384, 512)


def test_partition_table_matches_the_parallel_layers():
    model = tiny_model(perturb=False)
    for key, param in model.state_dict(keep_vars=True).items():
        expected = (
            Partition(param.partition_dim, param.partition_stride)
            if getattr(param, "model_parallel", False)
            else None
        )
        assert partition_of(key) == expected, key
    assert partition_of(SAT_EMBEDDING_KEY) == Partition(0)
    assert partition_of(QKV.format(0, "weight")) == Partition(0, 3)
    assert partition_of("transformer.layers.0.attention.dense.bias") is None


@pytest.fixture(scope="module")
def full_state() -> dict:
    return tiny_model(vocab_size=ROWS_MP2).state_dict()


@pytest.mark.parametrize("size", [2, 4])
def test_split_then_merge_is_exact_and_qkv_is_strided(full_state, size):
    shards = split_state_dict(full_state, size)
    assert_state_equal(merge_state_dicts(shards), full_state)
    n = HIDDEN // size
    for rank, shard in enumerate(shards):
        for layer in range(2):
            for kind in ("weight", "bias"):
                full = full_state[QKV.format(layer, kind)]  # [3h, (h)] rows = [Q; K; V]
                q, k, v = full[:HIDDEN], full[HIDDEN : 2 * HIDDEN], full[2 * HIDDEN :]
                rows = slice(rank * n, (rank + 1) * n)
                assert torch.equal(shard[QKV.format(layer, kind)], torch.cat([q[rows], k[rows], v[rows]]))
            assert torch.equal(
                shard[DENSE.format(layer)], full_state[DENSE.format(layer)][:, rank * n : (rank + 1) * n]
            )
        vocab_rows = ROWS_MP2 // size
        assert torch.equal(
            shard[EMBEDDING_KEY], full_state[EMBEDDING_KEY][rank * vocab_rows : (rank + 1) * vocab_rows]
        )
        assert torch.equal(shard[LN], full_state[LN])


def test_split_refuses_sizes_that_do_not_divide(full_state):
    with pytest.raises(
        PartitionError, match=r"word_embeddings\.weight has shape \[512, 32\]: .* into 3 model-par"
    ):
        split_state_dict(full_state, 3)
    trimmed = resize_vocab(full_state, 384, NUM_TOKENS)  # 384 rows split in 3, but the QKV's 96 rows do not
    with pytest.raises(PartitionError, match=r"query_key_value\.weight has shape \[96, 32\]"):
        split_state_dict(trimmed, 3)


def test_merge_rejects_shards_that_disagree(full_state):
    shards = split_state_dict(full_state, 2)
    changed = [shards[0], {**shards[1], LN: shards[1][LN] + 1}]
    with pytest.raises(
        PartitionError, match=rf"disagree on replicated tensor {LN}: shard 1 differs from shard 0"
    ):
        merge_state_dicts(changed)
    missing = [shards[0], {k: v for k, v in shards[1].items() if k != LN}]
    with pytest.raises(PartitionError, match=rf"key '{LN}' is in shard 0 but not shard 1"):
        merge_state_dicts(missing)
    reshaped = [shards[0], {**shards[1], EMBEDDING_KEY: shards[1][EMBEDDING_KEY][:10]}]
    with pytest.raises(
        PartitionError, match=r"disagree on word_embeddings\.weight: shape \[256, 32\] in shard 0"
    ):
        merge_state_dicts(reshaped)


def test_resize_vocab_pads_with_zeros_and_drops_only_padding(full_state):
    sat = {(SAT_EMBEDDING_KEY if k == EMBEDDING_KEY else k): v for k, v in full_state.items()}
    wider = resize_vocab(sat, 600)
    assert list(wider) == list(full_state)  # normalised to the original spelling, same order
    assert torch.equal(wider[EMBEDDING_KEY][:ROWS_MP2], full_state[EMBEDDING_KEY])
    assert torch.equal(wider[EMBEDDING_KEY][ROWS_MP2:], torch.zeros(600 - ROWS_MP2, HIDDEN))
    assert torch.equal(
        resize_vocab(full_state, NUM_TOKENS, NUM_TOKENS)[EMBEDDING_KEY], full_state[EMBEDDING_KEY][:300]
    )
    with pytest.raises(
        PartitionError, match=r"cutting it to 299 would drop real token rows \(real vocabulary size 300"
    ):
        resize_vocab(full_state, NUM_TOKENS - 1, NUM_TOKENS)
    with pytest.raises(PartitionError, match="real vocabulary size unknown"):
        resize_vocab(full_state, ROWS_MP1)
    with pytest.raises(PartitionError, match="holds both"):
        resize_vocab({**full_state, SAT_EMBEDDING_KEY: full_state[EMBEDDING_KEY]}, 600)


# --- the MP=1 → MP=2 → MP=1 round trip through files and two processes ------------------------------------


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, NUM_TOKENS, (2, 16), generator=torch.Generator().manual_seed(5))  # [b, s]
    return ids, torch.arange(16).expand(2, 16)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(*_inputs(), 0)[0]  # [b, s, V]


def _run_at_mp2(rank, world_size, resharded: Path, mp1: Path, saved: Path):
    """Per rank at MP=2: load the resharded and the MP=1 checkpoints, save again, build a fresh model."""
    mpu.initialize_model_parallel(2)
    results = {}
    for name, directory in (("resharded", resharded), ("direct", mp1)):
        model = tiny_model(vocab_size=ROWS_MP2, seed=99, parallel_output=False)
        assert load_checkpoint(model, directory) == ITERATION
        results[name] = _logits(model)
    save_checkpoint(model, saved, ITERATION)
    results["fresh"] = tiny_model(vocab_size=ROWS_MP2, seed=FRESH_SEED, perturb=False).state_dict()
    return results


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    model = tiny_model()
    client_state = {
        "client_lr_scheduler": {"num_iters": 1000},
        "optimizer": {"state": {}},
        "torch_rng_state": torch.get_rng_state(),
    }
    save_checkpoint(model, root / "mp1", ITERATION, client_state=client_state)
    argv = [str(root / "mp1"), str(root / "mp2"), "--target-mp", "2", "--num-tokens", str(NUM_TOKENS)]
    assert reshard_main(argv) == 0
    results = run_distributed(_run_at_mp2, 2, root / "mp2", root / "mp1", root / "saved")
    return {"root": root, "model": model, "reference": _logits(model), "ranks": results}


def test_resharded_files_have_the_layout_and_keep_layout_free_entries(round_trip):
    folder = round_trip["root"] / "mp2"
    assert (folder / TRACKER).read_text() == str(ITERATION)
    assert sorted(f.name for f in (folder / str(ITERATION)).iterdir()) == [
        SHARD,
        "mp_rank_01_model_states.pt",
    ]
    for rank in range(2):
        payload = read_shard(folder / str(ITERATION) / f"mp_rank_{rank:02d}_model_states.pt")
        assert set(payload) == {"iteration", "client_lr_scheduler", "mp_world_size", "module"}
        assert payload["iteration"] == ITERATION and payload["mp_world_size"] == 2
        assert payload["module"][EMBEDDING_KEY].shape == (ROWS_MP2 // 2, HIDDEN)


@pytest.mark.parametrize("source", ["resharded", "direct"])
def test_mp2_logits_equal_mp1_logits(round_trip, source):
    reference = round_trip["reference"]  # [b, s, 384]
    for result in round_trip["ranks"]:
        logits = result[source]  # [b, s, 512], gathered
        torch.testing.assert_close(logits[..., :ROWS_MP1], reference, atol=1e-5, rtol=1e-5)
        assert torch.equal(
            logits[..., ROWS_MP1:], torch.zeros(2, 16, ROWS_MP2 - ROWS_MP1)
        )  # zero padding rows


@pytest.mark.parametrize("source", ["mp2", "saved"])
def test_merging_mp2_back_gives_the_original_tensors(round_trip, source):
    root = round_trip["root"]
    merged = root / f"merged-{source}"
    assert (
        reshard_main([str(root / source), str(merged), "--target-mp", "1", "--num-tokens", str(NUM_TOKENS)])
        == 0
    )
    module = read_shard(merged / str(ITERATION) / SHARD)["module"]
    assert_state_equal(module, round_trip["model"].state_dict())  # the padding rows 384..511 are dropped


def test_model_built_at_mp2_equals_the_split_mp1_model(round_trip):
    full = tiny_model(vocab_size=ROWS_MP2, seed=FRESH_SEED, perturb=False).state_dict()
    for shard, result in zip(split_state_dict(full, 2), round_trip["ranks"], strict=True):
        assert_state_equal(result["fresh"], shard)


def test_mp2_shards_do_not_load_into_an_mp1_model(round_trip):
    with pytest.raises(
        CheckpointError, match=r"holds 2 model-parallel shards .* size 1; convert it with tools/"
    ):
        load_checkpoint(tiny_model(), round_trip["root"] / "mp2")


def test_reshard_to_4_reports_progress_per_shard(round_trip, tmp_path, capsys):
    source = round_trip["root"] / "mp1"
    assert (
        reshard_main(
            [str(source), str(tmp_path / "mp4"), "--target-mp", "4", "--num-tokens", str(NUM_TOKENS)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"reading {source / str(ITERATION) / SHARD} (1/1)" in out
    assert "not carried over (they belong to one rank of the old layout): optimizer, torch_rng_state" in out
    for rank in range(4):
        assert f"mp_rank_{rank:02d}_model_states.pt ({rank + 1}/4)" in out
    shards = [
        read_shard(tmp_path / "mp4" / str(ITERATION) / f"mp_rank_{r:02d}_model_states.pt")["module"]
        for r in range(4)
    ]
    merged = resize_vocab(merge_state_dicts(shards), ROWS_MP1, NUM_TOKENS)
    assert_state_equal(merged, round_trip["model"].state_dict())


def test_fp16_storage_halves_the_weights_and_loads_back_into_an_fp32_model(round_trip, tmp_path):
    source = round_trip["root"] / "mp1"
    argv = [str(source), str(tmp_path / "fp16"), "--target-mp", "1", "--num-tokens", str(NUM_TOKENS)]
    assert reshard_main([*argv, "--dtype", "fp16"]) == 0
    module = read_shard(tmp_path / "fp16" / str(ITERATION) / SHARD)["module"]
    assert {value.dtype for value in module.values()} == {torch.float16}
    model = tiny_model(perturb=False)
    load_checkpoint(model, tmp_path / "fp16")
    expected = {key: value.half().float() for key, value in round_trip["model"].state_dict().items()}
    assert_state_equal(model.state_dict(), expected)


def _copy_mp2(round_trip, tmp_path) -> Path:
    return Path(shutil.copytree(round_trip["root"] / "mp2", tmp_path / "src"))


def _break_missing_shard(src: Path) -> str:
    (src / str(ITERATION) / "mp_rank_01_model_states.pt").unlink()
    return r"shard .*/src/10/mp_rank_01_model_states\.pt is missing \(.*records mp_world_size 2\)"


def _break_disagreeing_shards(src: Path) -> str:
    path = src / str(ITERATION) / "mp_rank_01_model_states.pt"
    payload = torch.load(path, weights_only=True)  # not memory-mapped: the file is rewritten below
    payload["module"] = {**payload["module"], LN: payload["module"][LN] * 2}
    torch.save(payload, path)
    return rf"cannot reshard .*: model-parallel shards disagree on replicated tensor {LN}: .*mp_rank_01"


def _break_indivisible_target(src: Path) -> str:
    return r"to model-parallel size 3: .*query_key_value\.weight has shape \[96, 32\]: dimension 0 does not"


@pytest.mark.parametrize(
    ("breakage", "argv_tail"),
    [
        (_break_missing_shard, ["--target-mp", "1"]),
        (_break_disagreeing_shards, ["--target-mp", "1"]),
        (_break_indivisible_target, ["--target-mp", "3"]),
        (
            lambda src: "has 512 rows, fewer than 1000 tokens; pass --num-tokens with the size of",
            ["--target-mp", "1", "--num-tokens", "1000"],
        ),
        (
            lambda src: r"has 512 rows, fewer than 58219 tokens; pass --num-tokens .*the default 58219",
            ["--target-mp", "1", "--num-tokens", "58219"],  # the default, as a tiny model would get it
        ),
        (
            lambda src: r"the number of real tokens \(--num-tokens\) must be at least 1, got 0",
            ["--target-mp", "1", "--num-tokens", "0"],
        ),
    ],
    ids=["missing shard", "shards disagree", "target does not divide", "too few rows", "default", "zero"],
)
def test_reshard_tool_reports_one_line_errors_and_writes_nothing(
    round_trip, tmp_path, capsys, breakage, argv_tail
):
    src = _copy_mp2(round_trip, tmp_path)
    pattern = breakage(src)
    argv = [str(src), str(tmp_path / "dst"), "--num-tokens", str(NUM_TOKENS), *argv_tail]
    assert reshard_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reshard_checkpoint: error: ")
    assert re.search(pattern, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no destination, no temporary folder


def test_a_failed_write_leaves_nothing_and_a_rerun_works(round_trip, tmp_path, capsys, monkeypatch):
    src, dst = round_trip["root"] / "mp1", tmp_path / "dst"
    real_save, calls = torch.save, []

    def save_fails_on_the_second_shard(obj, file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(obj, file, *args, **kwargs)

    argv = [str(src), str(dst), "--target-mp", "2", "--num-tokens", str(NUM_TOKENS)]
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_fails_on_the_second_shard)
        assert reshard_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []  # neither the first shard nor a temporary folder
    assert reshard_main(argv) == 0
    assert (dst / TRACKER).read_text() == str(ITERATION)
    assert sorted(p.name for p in (dst / str(ITERATION)).iterdir()) == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]


def test_reshard_refuses_to_overwrite(round_trip, capsys):
    root = round_trip["root"]
    assert reshard_main([str(root / "mp1"), str(root / "mp1"), "--target-mp", "2"]) == 1
    assert "is the source directory" in capsys.readouterr().err
    assert reshard_main([str(root / "mp1"), str(root / "mp2"), "--target-mp", "2"]) == 1
    assert "destination " + str(root / "mp2") + " already exists and is not empty" in capsys.readouterr().err
