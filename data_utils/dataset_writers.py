"""Writers of the token dataset formats (LMDB, compact binary) with a resumable, crash-safe commit protocol.

The protocol, the same for both formats:
  * everything is written under `<path>.partial` (a directory for LMDB, a file for `.bin`); `<path>` itself
    appears only when the output is complete, by one rename;
  * `commit(rows, state, log_lines)` appends rows and report lines and records the caller's `state` (a JSON
    object) as one atomic step: after a crash, even a `kill -9` mid-commit, reopening the writer gives back
    the state of the last completed commit, with exactly the rows and log lines committed up to it;
  * `finish()` writes the LMDB's `length` key (the last key written, so a half-written LMDB is never taken for
    a complete one) and renames the partial output to `<path>`.
A file lock on `<path>.partial.lock` keeps two processes from writing the same output.
"""

import json
import os
import pickle
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
from filelock import FileLock, Timeout

from common.atomic_files import atomic_write_text, rename_into_place
from common.errors import InputError
from data_utils.datasets import BINARY_TEXT_LENGTH, LENGTH_KEY

_STATE_KEY = b"__writer_state__"
_LOG_PREFIX = b"__writer_log__/"
PICKLE_PROTOCOL = 4  # readable by the original's Python 3.8 environment


class OutputExistsError(InputError, FileExistsError):
    """The output path already holds a finished dataset."""


class WriterBusyError(InputError):
    """Another process is writing the same output (it holds the output's lock)."""


class PartialOutputError(InputError):
    """`<path>.partial` exists but was not written by these writers."""


class _ResumableWriter:
    """Common part: the partial path, the exists check and the inter-process lock."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.path.exists() and not overwrite:
            raise OutputExistsError(f"{self.path} already exists; delete it or choose another output path.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.partial) + ".lock")
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise WriterBusyError(
                f"Another process is writing {self.path} (it holds {self._lock.lock_file}); wait for it to "
                "finish or stop it (a rerun then resumes its work)."
            ) from None
        if overwrite:  # only now: the lock keeps another writer's output from being deleted under it
            delete_output(self.path, keep_lock=True)
        self.num_rows = 0
        self.num_log_lines = 0
        self.state: dict[str, Any] | None = None  # the caller's state at the last commit; None when fresh
        self.complete = False  # finished but not yet renamed (a crash inside finish())

    def _release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()
            Path(self._lock.lock_file).unlink(missing_ok=True)

    def __enter__(self) -> "_ResumableWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the output without finishing it; a later writer on the same path resumes it."""
        self._release()


class LMDBWriter(_ResumableWriter):
    """Appends pickled rows under keys '0', '1', … of a CogView LMDB; one LMDB transaction per commit."""

    def __init__(self, path: str | os.PathLike, map_size: int = 1 << 40, overwrite: bool = False):
        super().__init__(path, overwrite)
        self.env = lmdb.open(str(self.partial), map_size=map_size, subdir=True)
        with self.env.begin() as txn:
            raw_state = txn.get(_STATE_KEY)
            has_length = txn.get(LENGTH_KEY) is not None
        entries = self.env.stat()["entries"]
        if raw_state is not None:
            saved = json.loads(raw_state)
            self.num_rows, self.num_log_lines, self.state = saved["rows"], saved["log_lines"], saved["state"]
        elif has_length:
            self.complete = True
        elif entries:
            self.close()
            raise PartialOutputError(
                f"{self.partial} holds data not written by this tool; delete it and rerun."
            )

    def commit(self, rows: Sequence[Any], state: dict[str, Any], log_lines: Iterable[str] = ()) -> None:
        """Append `rows` (pickled as is) and `log_lines`, and record `state`, in one transaction."""
        log_lines = list(log_lines)
        with self.env.begin(write=True) as txn:
            for offset, row in enumerate(rows):
                txn.put(
                    str(self.num_rows + offset).encode("utf-8"), pickle.dumps(row, protocol=PICKLE_PROTOCOL)
                )
            for offset, line in enumerate(log_lines):
                txn.put(_LOG_PREFIX + b"%012d" % (self.num_log_lines + offset), line.encode("utf-8"))
            saved = {
                "rows": self.num_rows + len(rows),
                "log_lines": self.num_log_lines + len(log_lines),
                "state": state,
            }
            txn.put(_STATE_KEY, json.dumps(saved).encode("utf-8"))
        self.num_rows, self.num_log_lines, self.state = saved["rows"], saved["log_lines"], state

    def log_lines(self) -> list[str]:
        """All committed log lines, in order."""
        with self.env.begin() as txn:
            return [txn.get(_LOG_PREFIX + b"%012d" % i).decode("utf-8") for i in range(self.num_log_lines)]

    def finish(self) -> None:
        """Drop the bookkeeping keys, write `length` last, and move the LMDB to its final path."""
        if not self.complete:
            with self.env.begin(write=True) as txn:
                for i in range(self.num_log_lines):
                    txn.delete(_LOG_PREFIX + b"%012d" % i)
                txn.delete(_STATE_KEY)
                txn.put(LENGTH_KEY, str(self.num_rows).encode("ascii"))
            self.complete = True
        self.env.close()
        rename_into_place(self.partial, self.path)
        self._release()

    def close(self) -> None:
        self.env.close()
        super().close()


class BinaryWriter(_ResumableWriter):
    """Appends fixed-length int32 rows to a headerless `.bin` file (the `CompactBinaryDataset` format).

    Rows go to `<path>.partial`, log lines to `<path>.partial.log`, and each commit ends by atomically
    replacing `<path>.partial.json`, which records how many rows and log bytes are committed; reopening
    truncates both files back to that, discarding anything a crash left behind.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        length_per_sample: int = BINARY_TEXT_LENGTH + 1024,
        overwrite: bool = False,
    ):
        super().__init__(path, overwrite)
        self.length_per_sample = length_per_sample
        self.row_bytes = 4 * length_per_sample
        self.state_file = self.partial.with_name(self.partial.name + ".json")
        self.log_file = self.partial.with_name(self.partial.name + ".log")
        log_bytes = 0
        if self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            self.num_rows, self.num_log_lines, self.state = saved["rows"], saved["log_lines"], saved["state"]
            log_bytes, self.complete = saved["log_bytes"], saved["complete"]
            if saved["length_per_sample"] != length_per_sample:
                self.close()
                raise PartialOutputError(
                    f"{self.partial} has rows of {saved['length_per_sample']} values, "
                    f"not {length_per_sample}."
                )
        # Both files stay open across commits; finish() and close() close them.
        self._data = open(self.partial, "ab")  # noqa: SIM115
        self._data.truncate(self.num_rows * self.row_bytes)
        self._log = open(self.log_file, "ab")  # noqa: SIM115
        self._log.truncate(log_bytes)
        self._log.seek(log_bytes)  # tell() must report the truncated size: it is what the state records

    def _save_state(self) -> None:
        saved = {
            "rows": self.num_rows,
            "log_lines": self.num_log_lines,
            "log_bytes": self._log.tell(),
            "length_per_sample": self.length_per_sample,
            "complete": self.complete,
            "state": self.state,
        }
        atomic_write_text(self.state_file, json.dumps(saved))

    def commit(
        self, rows: Sequence[Sequence[int]] | np.ndarray, state: dict[str, Any], log_lines: Iterable[str] = ()
    ) -> None:
        """Append `rows` [k, length_per_sample] (as int32) and `log_lines`, then record `state`."""
        array = np.asarray(rows, dtype=np.int64).reshape(-1, self.length_per_sample)  # [k, length_per_sample]
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise ValueError(f"Rows for {self.path} hold values that do not fit int32.")
        self._data.write(array.astype(np.int32).tobytes())
        lines = list(log_lines)
        self._log.write("".join(line + "\n" for line in lines).encode("utf-8"))
        for handle in (self._data, self._log):
            handle.flush()
            os.fsync(handle.fileno())
        self.num_rows += len(array)
        self.num_log_lines += len(lines)
        self.state = state
        self._save_state()

    def log_lines(self) -> list[str]:
        """All committed log lines, in order."""
        self._log.flush()
        return self.log_file.read_text(encoding="utf-8").splitlines()

    def finish(self) -> None:
        """Move the finished `.bin` to its final path and drop the bookkeeping files."""
        self.complete = True
        self._save_state()
        self._data.close()
        self._log.close()
        rename_into_place(self.partial, self.path)
        self.state_file.unlink()
        self.log_file.unlink()
        self._release()

    def close(self) -> None:
        if hasattr(self, "_data"):
            self._data.close()
            self._log.close()
        super().close()


def delete_output(path: str | os.PathLike, keep_lock: bool = False) -> None:
    """Remove a finished or partial output of either writer, with its bookkeeping files.

    ``keep_lock``: leave the lock file, which the caller holds (removing a held lock file would let another
    process lock a new one and write at the same time).
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    for target in (path, partial):
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for suffix in (".json", ".log") if keep_lock else (".json", ".log", ".lock"):
        partial.with_name(partial.name + suffix).unlink(missing_ok=True)


def write_lmdb(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write a whole CogView LMDB of `rows` (e.g. int64 id arrays) in one go; returns the number of rows."""
    writer = LMDBWriter(path)
    writer.commit(list(rows), state={})
    writer.finish()
    return writer.num_rows


def write_binary(
    path: str | os.PathLike, rows: np.ndarray, length_per_sample: int = BINARY_TEXT_LENGTH + 1024
) -> int:
    """Write a whole compact binary file of `rows` [n, length_per_sample] as int32; returns the row count."""
    writer = BinaryWriter(path, length_per_sample)
    writer.commit(rows, state={})
    writer.finish()
    return writer.num_rows


def binary_row(text_ids: Sequence[int], codes: np.ndarray) -> np.ndarray:
    """A compact binary row: text ids right-padded with −1 to 64 slots, then the codes (text2image only)."""
    text = np.full(BINARY_TEXT_LENGTH, -1, dtype=np.int64)
    text[: len(text_ids)] = text_ids
    return np.concatenate([text, np.asarray(codes, dtype=np.int64)])
