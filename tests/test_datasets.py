"""Token datasets: LMDB and compact binary formats, padding and loss mask, writers, and clear errors."""

import argparse
import os
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import sentencepiece as spm

from data_utils.dataset_writers import (
    BinaryWriter,
    LMDBWriter,
    OutputExistsError,
    delete_output,
    write_binary,
    write_lmdb,
)
from data_utils.datasets import (
    BinaryDataset,
    DatasetFormatError,
    DatasetNotFoundError,
    LMDBDataset,
    get_dataset_by_type,
    load_row,
    open_lmdb,
    sequence_length,
)
from data_utils.unified_tokenizer import UnifiedTokenizer

ROI1, BASE, BOI1, EOI1, PAD = 58199, 58208, 58193, 58196, 58192


def make_args(max_pos: int = 1089, finetune: bool = False, max_pos_finetune: int = -1) -> argparse.Namespace:
    return argparse.Namespace(
        max_position_embeddings=max_pos, finetune=finetune, max_position_embeddings_finetune=max_pos_finetune
    )


def padded(ids: list[int], length: int) -> tuple[list[int], list[int]]:
    """Independent statement of the rule: right-pad with [PAD] (mask 0) or cut to `length` (mask 1)."""
    ids = ids[:length]
    return ids + [PAD] * (length - len(ids)), [1] * len(ids) + [0] * (length - len(ids))


def test_tokenized_lmdb_round_trip(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    rows = [np.arange(5, dtype=np.int64), np.arange(100, 120, dtype=np.int64), np.arange(40, dtype=np.int64)]
    assert write_lmdb(tmp_path / "t.lmdb", rows) == 3
    dataset = get_dataset_by_type("TokenizedDataset", tmp_path / "t.lmdb", make_args(32), real_tokenizer)
    assert len(dataset) == 3
    for row, sample in zip(rows, (dataset[0], dataset[1]), strict=False):
        text, mask = padded(row.tolist(), 32)
        assert sample["text"].dtype == np.int64 and sample["loss_mask"].dtype == np.int64
        assert sample["text"].tolist() == text and sample["loss_mask"].tolist() == mask
    with pytest.warns(UserWarning, match="Out of max len, truncated"):
        long = dataset[2]
    assert long["text"].tolist() == list(range(32)) and long["loss_mask"].tolist() == [1] * 32
    with pytest.raises(IndexError, match="Index 3 is out of range"):
        dataset[3]


def test_text_code_lmdb(
    tmp_path: Path, real_tokenizer: UnifiedTokenizer, real_sp: spm.SentencePieceProcessor
) -> None:
    code = np.arange(1024).reshape(32, 32)
    write_lmdb(tmp_path / "tc.lmdb", [("一只猫", code), (np.array([9000, 9001]), code)])
    dataset = get_dataset_by_type("TextCodeDataset", tmp_path / "tc.lmdb", make_args(1089), real_tokenizer)
    cat = [i + 8192 for i in real_sp.EncodeAsIds("一只猫")]
    for index, text in enumerate([cat, [9000, 9001]]):
        expected, mask = padded([ROI1, *text, BASE, BOI1, *range(1024), EOI1], 1089)
        assert dataset[index]["text"].tolist() == expected and dataset[index]["loss_mask"].tolist() == mask


def binary_rows(text_lengths: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.full((len(text_lengths), 64 + 1024), -1, dtype=np.int32)
    for i, n in enumerate(text_lengths):
        rows[i, :n] = rng.integers(8192, 58192, n)
        rows[i, 64:] = rng.integers(0, 8192, 1024)
    return rows


def test_compact_binary_round_trip(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    rows = binary_rows([5, 64, 0])
    assert write_binary(tmp_path / "d.bin", rows) == 3
    assert (tmp_path / "d.bin").stat().st_size == 3 * 1088 * 4
    raw = BinaryDataset(tmp_path / "d.bin", lambda row: row)
    preloaded = BinaryDataset(tmp_path / "d.bin", lambda row: row, preload=True)
    assert len(raw) == 3 and all(
        np.array_equal(raw[i], rows[i]) and np.array_equal(preloaded[i], rows[i]) for i in range(3)
    )
    dataset = get_dataset_by_type("CompactBinaryDataset", tmp_path / "d.bin", make_args(1089), real_tokenizer)
    short = [ROI1, *rows[0, :5].tolist(), BASE, BOI1, *rows[0, 64:].tolist(), EOI1]
    assert dataset[0]["text"].tolist() == padded(short, 1089)[0]
    assert dataset[0]["loss_mask"].sum() == 5 + 1028
    full = [
        ROI1,
        *rows[1, :64].tolist(),
        BASE,
        BOI1,
        *rows[1, 64:].tolist(),
        EOI1,
    ]  # 1092 tokens: cut to 1089
    with pytest.warns(UserWarning, match="Out of max len"):
        assert dataset[1]["text"].tolist() == full[:1089]
    assert dataset[2]["text"][:3].tolist() == [ROI1, BASE, BOI1]


def test_sequence_length_rule() -> None:
    assert sequence_length(make_args(1089)) == 1089
    assert sequence_length(make_args(1089, finetune=True, max_pos_finetune=1345)) == 1345
    assert sequence_length(make_args(1089, finetune=False, max_pos_finetune=1345)) == 1089
    assert sequence_length(make_args(1089, finetune=True, max_pos_finetune=512)) == 1089
    positions_only = make_args(1089, max_pos_finetune=1345)
    positions_only.finetune_positions = True  # the added flag: the longer rows without --finetune
    assert sequence_length(positions_only) == 1345


def test_finetune_length_pads_further(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    write_lmdb(tmp_path / "sr.lmdb", [np.arange(1200)])
    args = make_args(1089, finetune=True, max_pos_finetune=1345)
    sample = get_dataset_by_type("TokenizedDataset", tmp_path / "sr.lmdb", args, real_tokenizer)[0]
    assert sample["text"].tolist() == padded(list(range(1200)), 1345)[0]


def test_unknown_dataset_type(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    with pytest.raises(ValueError, match="Unknown dataset type 'Lmdb'; choose one of TokenizedDataset"):
        get_dataset_by_type("Lmdb", tmp_path, make_args(), real_tokenizer)


def test_lmdb_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"missing\.lmdb does not exist"):
        LMDBDataset(tmp_path / "missing.lmdb", list)
    (tmp_path / "half.lmdb.partial").mkdir()
    with pytest.raises(
        DatasetNotFoundError, match=r"half\.lmdb does not exist \(preprocessing into it has not finished"
    ):
        LMDBDataset(tmp_path / "half.lmdb", list)
    (tmp_path / "empty.lmdb").mkdir()
    with pytest.raises(DatasetFormatError, match=r"empty\.lmdb is not an LMDB dataset"):
        LMDBDataset(tmp_path / "empty.lmdb", list)
    (tmp_path / "junk.lmdb").mkdir()
    (tmp_path / "junk.lmdb" / "data.mdb").write_bytes(os.urandom(20000))
    with pytest.raises(DatasetFormatError, match=r"Cannot open LMDB .*junk\.lmdb"):
        LMDBDataset(tmp_path / "junk.lmdb", list)
    for name, length in (("other.lmdb", None), ("bad_length.lmdb", b"three")):
        with lmdb.open(str(tmp_path / name)) as env, env.begin(write=True) as txn:
            txn.put(b"0", pickle.dumps(np.arange(3)))
            if length is not None:
                txn.put(b"length", length)
    with pytest.raises(
        DatasetFormatError, match=r"other\.lmdb has no 'length' key: it is not a CogView token dataset"
    ):
        LMDBDataset(tmp_path / "other.lmdb", list)
    with pytest.raises(DatasetFormatError, match="invalid 'length' value b'three'"):
        LMDBDataset(tmp_path / "bad_length.lmdb", list)


def test_truncated_lmdb_is_refused_before_mapping(tmp_path: Path) -> None:
    """A data.mdb cut short would open, report its length and die of SIGBUS on reading (no Python error)."""
    rows = [np.arange(i, i + 2000) for i in range(40)]
    write_lmdb(tmp_path / "whole.lmdb", rows)
    data = (tmp_path / "whole.lmdb" / "data.mdb").read_bytes()
    assert len(LMDBDataset(tmp_path / "whole.lmdb", list)) == 40
    for name, kept in (("half.lmdb", len(data) // 2), ("one_page_short.lmdb", len(data) - 4096)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.mdb").write_bytes(data[:kept])
        with pytest.raises(
            DatasetFormatError,
            match=rf"Cannot open LMDB .*{name}: .*data\.mdb is truncated: it holds {kept} bytes but its "
            rf"header says {len(data)}; copy or build the dataset again\.",
        ):
            LMDBDataset(tmp_path / name, list)
    (tmp_path / "stub.lmdb").mkdir()
    (tmp_path / "stub.lmdb" / "data.mdb").write_bytes(data[:100])
    with pytest.raises(DatasetFormatError, match=r"data\.mdb is only 100 bytes long, too short"):
        LMDBDataset(tmp_path / "stub.lmdb", list)


class _Sneaky:
    def __reduce__(self) -> tuple:
        return (os.getpid, ())


def test_rows_unpickle_safely(tmp_path: Path) -> None:
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        row = np.arange(7, dtype=np.int64)
        assert np.array_equal(load_row(pickle.dumps(row, protocol=protocol)), row)
        pair = ("一只猫", np.arange(4, dtype=np.int32).reshape(2, 2))
        text, code = load_row(pickle.dumps(pair, protocol=protocol))
        assert text == pair[0] and np.array_equal(code, pair[1])
    write_lmdb(tmp_path / "evil.lmdb", [np.arange(3), _Sneaky()])
    dataset = LMDBDataset(tmp_path / "evil.lmdb", lambda row: row)
    assert dataset[0].tolist() == [0, 1, 2]
    with pytest.raises(
        DatasetFormatError, match=r"Sample 1 of LMDB .*evil.lmdb is not a pickled token row .*posix.getpid"
    ):
        dataset[1]


def test_row_type_errors(tmp_path: Path, real_tokenizer: UnifiedTokenizer) -> None:
    write_lmdb(tmp_path / "pairs.lmdb", [("一只猫", np.arange(1024))])
    dataset = get_dataset_by_type("TokenizedDataset", tmp_path / "pairs.lmdb", make_args(), real_tokenizer)
    with pytest.raises(
        DatasetFormatError, match=r"must be an integer array, got a tuple.*\(text, codes\) pairs"
    ):
        dataset[0]


def test_binary_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"nothing\.bin does not exist"):
        BinaryDataset(tmp_path / "nothing.bin", list)
    (tmp_path / "odd.bin").write_bytes(b"\0" * (1088 * 4 + 8))
    with pytest.raises(
        DatasetFormatError, match=r"odd.bin holds 4360 bytes, not a whole positive number of rows of 1088"
    ):
        BinaryDataset(tmp_path / "odd.bin", list)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=r"empty\.bin holds 0 bytes"):
        BinaryDataset(tmp_path / "empty.bin", list)


def test_lmdb_writer_resumes_after_crash(tmp_path: Path) -> None:
    out = tmp_path / "w.lmdb"
    writer = LMDBWriter(out)
    writer.commit([np.arange(3)], {"step": 1}, ["skipped a"])
    writer.commit([np.arange(4), np.arange(5)], {"step": 2})
    writer.env.close()  # a crash: no finish, lock released by the OS
    writer._release()
    with pytest.raises(DatasetNotFoundError, match="has not finished"):
        LMDBDataset(out, list)
    resumed = LMDBWriter(out)
    assert (resumed.num_rows, resumed.state, resumed.log_lines()) == (3, {"step": 2}, ["skipped a"])
    resumed.commit([np.arange(6)], {"step": 3}, ["skipped b"])
    assert resumed.log_lines() == ["skipped a", "skipped b"]
    resumed.finish()
    dataset = LMDBDataset(out, lambda row: row.tolist())
    assert [dataset[i] for i in range(len(dataset))] == [list(range(n)) for n in (3, 4, 5, 6)]
    with open_lmdb(out).begin() as txn:
        assert sorted(key for key, _ in txn.cursor()) == [b"0", b"1", b"2", b"3", b"length"]
    assert not (tmp_path / "w.lmdb.partial").exists() and not (tmp_path / "w.lmdb.partial.lock").exists()
    with pytest.raises(OutputExistsError, match=r"w\.lmdb already exists"):
        LMDBWriter(out)


def test_binary_writer_discards_torn_writes(tmp_path: Path) -> None:
    rows = binary_rows([3, 10, 64, 1])
    out = tmp_path / "w.bin"
    writer = BinaryWriter(out)
    writer.commit(rows[:2], {"done": 2}, ["x\tbad image"])
    writer.close()
    with open(tmp_path / "w.bin.partial", "ab") as data, open(tmp_path / "w.bin.partial.log", "ab") as log:
        data.write(b"\1" * 999)  # a crash in the middle of the next commit
        log.write(b"half a li")
    resumed = BinaryWriter(out)
    assert (resumed.num_rows, resumed.state, resumed.log_lines()) == (2, {"done": 2}, ["x\tbad image"])
    resumed.commit(rows[2:], {"done": 4})
    resumed.finish()
    assert out.read_bytes() == rows.astype(np.int32).tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin"]


def test_delete_output_removes_partial_bookkeeping(tmp_path: Path) -> None:
    writer = BinaryWriter(tmp_path / "p.bin")
    writer.commit(binary_rows([2]), {"done": 1}, ["a line"])
    writer.close()
    (tmp_path / "p.bin.partial.lock").touch()  # as left by a killed process
    write_lmdb(tmp_path / "q.lmdb", [np.arange(2)])
    delete_output(tmp_path / "p.bin")
    delete_output(tmp_path / "q.lmdb")
    assert list(tmp_path.iterdir()) == []
