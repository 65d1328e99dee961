"""Checks on an LMDB data file made from its header, before LMDB memory-maps it.

LMDB maps ``data.mdb`` whole and trusts it: a file cut short (a copy that stopped, a full disk) opens, reports
its length, and then kills the reading process with SIGBUS when a read reaches a page past the end, with no
Python error to catch. The two meta pages at the start of the file say how many pages the last committed
transaction uses, so a file shorter than that is refused with one clear error instead.

Layout of LMDB 0.9 on a 64-bit machine (the version the ``lmdb`` package bundles): pages 0 and 1 are meta
pages; each starts with a 16-byte page header, then ``MDB_meta``: magic ``0xBEEFC0DE`` (uint32), version
(uint32), map address (8 bytes), map size (8), two ``MDB_db`` records of 48 bytes (the free-page database,
whose first field holds the page size, then the main database), the last used page number (8) and the
transaction id (8). The meta page with the larger transaction id is the current one.
"""

import os
import struct
from pathlib import Path

from common.errors import InputError

PAGE_HEADER_BYTES = 16
META_FORMAT = "=IIQQ48s48sQQ"  # magic, version, address, map size, free db, main db, last page, txn id
META_BYTES = struct.calcsize(META_FORMAT)
LMDB_MAGIC = 0xBEEFC0DE
LMDB_DATA_VERSION = 1


class LMDBFileError(InputError):
    """An LMDB data file that is not one, or is shorter than its header says."""


def _meta(header: bytes, offset: int) -> tuple[int, int, int]:
    """(page size, last page number, transaction id) of the meta page at byte ``offset`` of ``header``."""
    magic, version, _, _, free_db, _, last_page, txn_id = struct.unpack_from(
        META_FORMAT, header, offset + PAGE_HEADER_BYTES
    )
    if magic != LMDB_MAGIC or version != LMDB_DATA_VERSION:
        raise LMDBFileError("not an LMDB data file (bad magic number or version)")
    (page_size,) = struct.unpack_from("=I", free_db)
    return page_size, last_page, txn_id


def required_size(data_file: str | os.PathLike) -> int:
    """The size in bytes that ``data_file``'s current meta page says the file has at least."""
    with open(data_file, "rb") as handle:
        first = handle.read(PAGE_HEADER_BYTES + META_BYTES)
        if len(first) < PAGE_HEADER_BYTES + META_BYTES:
            raise LMDBFileError(f"only {len(first)} bytes long, too short for an LMDB header")
        page_size, last_page, txn_id = _meta(first, 0)
        if page_size < PAGE_HEADER_BYTES + META_BYTES or page_size & (page_size - 1):
            raise LMDBFileError(f"not an LMDB data file (its header gives a page size of {page_size})")
        handle.seek(page_size)
        second = handle.read(PAGE_HEADER_BYTES + META_BYTES)
    if len(second) == PAGE_HEADER_BYTES + META_BYTES:
        other_page_size, other_last_page, other_txn_id = _meta(second, 0)
        if other_page_size == page_size and other_txn_id > txn_id:
            last_page = other_last_page
    return max(last_page + 1, 2) * page_size


def check_lmdb_file(data_file: str | os.PathLike) -> None:
    """Raise :class:`LMDBFileError` naming ``data_file`` if it is not an LMDB file or is truncated."""
    data_file = Path(data_file)
    try:
        needed = required_size(data_file)
    except LMDBFileError as error:
        raise LMDBFileError(f"{data_file} is {error}") from None
    size = data_file.stat().st_size
    if size < needed:
        raise LMDBFileError(
            f"{data_file} is truncated: it holds {size} bytes but its header says {needed}; "
            "copy or build the dataset again"
        )
