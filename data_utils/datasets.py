"""Token datasets on disk (LMDB and compact binary) and the padding / loss mask every training sample gets.

Formats, unchanged from the original so existing data loads as is:
  * LMDB (`TokenizedDataset`, `TextCodeDataset`): key `length` = number of samples as decimal ASCII, key
    `str(i)` = a pickled row; a 1-D integer array of unified ids, or a `(text, codes)` pair.
  * compact binary (`CompactBinaryDataset`): headerless int32 rows of 64 unified text ids (right-padded
    with −1) followed by 1024 image codes.
Every sample becomes `{'text': int64[ml], 'loss_mask': int64[ml]}`: right-padded with `[PAD]` (mask 0) or cut
to `ml`, where `ml` is `max_position_embeddings`, or `max_position_embeddings_finetune` when finetuning with a
longer one.
"""

import argparse
import io
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from torch.utils.data import Dataset

from common.errors import InputError, MissingInputError
from data_utils.lmdb_file import LMDBFileError, check_lmdb_file
from data_utils.templates import TextCodeTemplate
from data_utils.unified_tokenizer import UnifiedTokenizer, tokenizer_or_default

DATASET_TYPES = ("TokenizedDataset", "TextCodeDataset", "CompactBinaryDataset")
BINARY_TEXT_LENGTH = 64  # text slots of a compact binary row
LENGTH_KEY = b"length"

Sample = dict[str, np.ndarray]


class DatasetNotFoundError(MissingInputError):
    """A dataset path that does not exist."""


class DatasetFormatError(InputError):
    """A dataset file that is not (or not entirely) in the expected format."""


# The globals a pickled row may reference: numpy arrays and dtypes under numpy 1.x and 2.x module names.
_ROW_PICKLE_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{prefix}.multiarray", "_reconstruct"),
        (f"{prefix}.multiarray", "scalar"),
        (f"{prefix}.numeric", "_frombuffer"),
    )
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # protocol 2 pickles bytes via encode


class _RowUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain Python values, so a crafted LMDB cannot run code when read."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ROW_PICKLE_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a token row may not reference {module}.{name}")


def load_row(data: bytes) -> Any:
    """Unpickle one LMDB value with only numpy arrays, dtypes and plain Python values allowed."""
    return _RowUnpickler(io.BytesIO(data)).load()


_READ_ENVS: dict[tuple[int, int], lmdb.Environment] = {}


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """The read-only environment of the LMDB directory `path`, one per file per process tree.

    LMDB forbids opening the same files twice in one process, and a forked DataLoader worker inherits its
    parent's open environments, so environments are cached by the identity of `data.mdb` and reused; with
    `lock=False` and read-only access, using an inherited one is safe.
    """
    data = Path(path) / "data.mdb"
    identity = (data.stat().st_dev, data.stat().st_ino)
    env = _READ_ENVS.get(identity)
    if env is None:
        try:
            check_lmdb_file(data)  # LMDB itself would map a truncated file and die of SIGBUS on reading
        except LMDBFileError as error:
            raise DatasetFormatError(f"Cannot open LMDB {path}: {error}.") from None
        try:
            env = lmdb.open(
                str(path), max_readers=32, readonly=True, lock=False, readahead=False, meminit=False
            )
        except lmdb.Error as error:
            raise DatasetFormatError(f"Cannot open LMDB {path}: {error}.") from error
        _READ_ENVS[identity] = env
    return env


class LMDBDataset(Dataset):
    """Rows of a CogView LMDB (pickles under keys '0', '1', …, count under 'length'), mapped by `process_fn`.

    The environment is opened read-only through `open_lmdb`, so the dataset works in DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike, process_fn: Callable[[Any], Any]):
        self.path = Path(path)
        self.process_fn = process_fn
        self._env: lmdb.Environment | None = None
        if not self.path.exists():
            partial = self.path.with_name(self.path.name + ".partial")
            hint = f" (preprocessing into it has not finished: {partial} exists)" if partial.exists() else ""
            raise DatasetNotFoundError(f"LMDB dataset {self.path} does not exist{hint}.")
        if not (self.path / "data.mdb").is_file():
            raise DatasetFormatError(
                f"{self.path} is not an LMDB dataset: it is not a directory holding data.mdb."
            )
        value = self._get(LENGTH_KEY)
        if value is None:
            raise DatasetFormatError(
                f"LMDB {self.path} has no 'length' key: it is not a CogView token dataset, or it was not "
                "finished."
            )
        try:
            self.length = int(value.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise DatasetFormatError(
                f"LMDB {self.path} has an invalid 'length' value {value[:20]!r}."
            ) from None

    def _get(self, key: bytes) -> bytes | None:
        if self._env is None:
            self._env = open_lmdb(self.path)
        try:
            with self._env.begin(write=False, buffers=False) as txn:
                return txn.get(key)
        except lmdb.Error as error:
            raise DatasetFormatError(
                f"LMDB {self.path} is corrupt (reading key {key!r}: {error})."
            ) from error

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(f"Index {index} is out of range for LMDB {self.path} of {self.length} samples.")
        key = str(index).encode("utf-8")
        value = self._get(key)
        if value is None:
            raise DatasetFormatError(
                f"LMDB {self.path} has no sample {index} although its length is {self.length}."
            )
        try:
            row = load_row(value)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
            raise DatasetFormatError(
                f"Sample {index} of LMDB {self.path} is not a pickled token row ({error})."
            ) from error
        return self.process_fn(row)


class BinaryDataset(Dataset):
    """Fixed-length rows of a headerless binary file (memory-mapped, or read whole with `preload`)."""

    def __init__(
        self,
        path: str | os.PathLike,
        process_fn: Callable[[np.ndarray], Any],
        length_per_sample: int = BINARY_TEXT_LENGTH + 1024,
        dtype: np.dtype | str | type = np.int32,
        preload: bool = False,
    ):
        self.path = Path(path)
        self.process_fn = process_fn
        self.length_per_sample = length_per_sample
        self.dtype = np.dtype(dtype)
        if not self.path.is_file():
            raise DatasetNotFoundError(f"Binary dataset {self.path} does not exist.")
        row_bytes = length_per_sample * self.dtype.itemsize
        size = self.path.stat().st_size
        if size == 0 or size % row_bytes:
            raise DatasetFormatError(
                f"Binary dataset {self.path} holds {size} bytes, not a whole positive number of rows of "
                f"{length_per_sample} {self.dtype} values ({row_bytes} bytes each)."
            )
        shape = (size // row_bytes, length_per_sample)
        if preload:
            self.bin = np.fromfile(self.path, dtype=self.dtype).reshape(shape)
        else:
            self.bin = np.memmap(self.path, dtype=self.dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return self.bin.shape[0]

    def __getitem__(self, index: int) -> Any:
        return self.process_fn(self.bin[index])


def uses_finetune_positions(args: argparse.Namespace) -> bool:
    """Whether training uses the longer finetuning sequence and the `[ROI2]` position reset.

    That is `--finetune` (or the added `--finetune-positions`) with `--max-position-embeddings-finetune`
    above `--max-position-embeddings`. Namespaces built by hand with the original's fields only (no
    `finetune_positions`) read as without the added flag.
    """
    finetuning = args.finetune or getattr(args, "finetune_positions", False)
    return finetuning and args.max_position_embeddings_finetune > args.max_position_embeddings


def sequence_length(args: argparse.Namespace) -> int:
    """Training sequence length `ml`: the finetuning one if finetuning with a longer one, else the usual."""
    if uses_finetune_positions(args):
        return args.max_position_embeddings_finetune
    return args.max_position_embeddings


def pad_to_length(ids: np.ndarray, length: int, pad_id: int) -> Sample:
    """Right-pad 1-D ids with `pad_id` (loss mask 0) or cut them to `length`.

    Returns {'text': int64[length], 'loss_mask': int64[length]}.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) > length:
        warnings.warn("Out of max len, truncated.", stacklevel=2)
        ids = ids[:length]
    kept = len(ids)
    text = np.full(length, pad_id, dtype=np.int64)
    text[:kept] = ids
    loss_mask = np.zeros(length, dtype=np.int64)
    loss_mask[:kept] = 1
    return {"text": text, "loss_mask": loss_mask}


class RowProcessor:
    """The `process_fn` of each dataset type: stored row → padded training sample (picklable for workers)."""

    def __init__(self, dataset_type: str, length: int, tokenizer: UnifiedTokenizer):
        if dataset_type not in DATASET_TYPES:
            raise InputError(
                f"Unknown dataset type {dataset_type!r}; choose one of {', '.join(DATASET_TYPES)}."
            )
        self.dataset_type = dataset_type
        self.length = length
        self.tokenizer = tokenizer

    def __call__(self, row: Any) -> Sample:
        if self.dataset_type == "TokenizedDataset":
            ids = None if isinstance(row, tuple) else np.asarray(row)
            if ids is None or ids.dtype.kind not in "iu":
                raise DatasetFormatError(
                    f"A TokenizedDataset row must be an integer array, got a {type(row).__name__} "
                    "(TextCodeDataset rows are (text, codes) pairs)."
                )
        elif self.dataset_type == "TextCodeDataset":
            text, code = row[0], np.asarray(row[1]).reshape(-1)
            ids = TextCodeTemplate(text, code, tokenizer=self.tokenizer)
        else:
            text = row[:BINARY_TEXT_LENGTH].astype(np.int64)
            code = row[BINARY_TEXT_LENGTH:].astype(np.int64)
            ids = TextCodeTemplate(text[text > -1], code, tokenizer=self.tokenizer)
        return pad_to_length(ids, self.length, self.tokenizer["[PAD]"])


def get_dataset_by_type(
    dataset_type: str,
    path: str | os.PathLike,
    args: argparse.Namespace,
    tokenizer: UnifiedTokenizer | None = None,
) -> LMDBDataset | BinaryDataset:
    """Open the dataset at `path` as `dataset_type` (one of DATASET_TYPES) with the original padding and mask.

    `args` supplies `max_position_embeddings`, `finetune` and `max_position_embeddings_finetune`; the
    tokenizer defaults to `get_tokenizer(args)`.
    """
    tokenizer = tokenizer_or_default(tokenizer, args)
    process_fn = RowProcessor(dataset_type, sequence_length(args), tokenizer)
    if dataset_type == "CompactBinaryDataset":
        return BinaryDataset(path, process_fn)
    return LMDBDataset(path, process_fn)
