"""Where generation queries come from: a file (split over processes) or the interactive prompt.

A query is one line of TAB-separated fields, e.g. ``text`` for text2image or ``text<TAB>img1<TAB>img2``
for post-selection; with ``--with-id`` the first field is an id naming the query's output folder.
Reading and splitting are separate steps so that a malformed line becomes a per-query error (reported
with its line number) instead of ending the run.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from common.errors import InputError
from data_utils.unified_tokenizer import QueryError

PROMPT = "Please Input Query (stop to exit) >>> "
STOP = "stop"


class InputFileError(InputError):
    """The query file cannot be read (missing, a folder, or not UTF-8 text)."""


@dataclass(frozen=True)
class Query:
    """One query: its raw line and where it came from (``number`` is 1-based)."""

    number: int
    line: str
    interactive: bool = False

    @property
    def where(self) -> str:
        """'line 3' for the third line of the input file, 'query 3' for the third interactive query."""
        return f"{'query' if self.interactive else 'line'} {self.number}"


# One slot of the query loop: (line number, query or None for a blank line), or None as padding.
Slot = tuple[int, Query | None] | None
MAX_ID_BYTES = 200  # an id names a folder; with the suffixes added to it, it must fit a file name (255)


def read_query_file(path: str | os.PathLike, rank: int = 0, world_size: int = 1) -> tuple[list[Query], int]:
    """The non-blank lines of ``path`` that belong to process ``rank``, and the file's number of lines.

    Lines are dealt round-robin, line n (1-based) to rank ``(n - 1) % world_size``, as the original did.
    Line numbers are kept so that errors and aligned result files refer to the file's own lines.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"input file {path} does not exist (pass --input-source FILE or interactive)")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): editors count \n only
    except UnicodeDecodeError as error:
        line_no = path.read_bytes()[: error.start].count(b"\n") + 1
        raise InputFileError(f"input file {path} is not UTF-8 text (line {line_no})") from error
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    queries = [
        Query(number, line.removesuffix("\r"))
        for number, line in enumerate(lines, 1)
        if (number - 1) % world_size == rank and line.strip()
    ]
    return queries, len(lines)


def file_slots(queries: Sequence[Query], num_lines: int, rank: int = 0, world_size: int = 1) -> list[Slot]:
    """Process ``rank``'s lines of a file of ``num_lines``, in order, as the runner's slots.

    Each slot is ``(line number, query)``, with None for a blank line (its results line stays empty); the
    list is padded with None to the same length on every process (``ceil(num_lines / world_size)``), so
    that all of them take part in every round in which the results lines are gathered.
    """
    by_number = {query.number: query for query in queries}
    numbers = range(rank + 1, num_lines + 1, world_size)
    rounds = -(-num_lines // world_size)
    return [(number, by_number.get(number)) for number in numbers] + [None] * (rounds - len(numbers))


def interactive_queries(
    read: Callable[[str], str] = input, write: Callable[[str], None] = print
) -> Iterator[Query]:
    """Queries typed at the prompt, until ``stop`` or end of input; empty ones are refused with a message."""
    number = 0
    while True:
        try:
            line = read(PROMPT)
        except EOFError:
            return
        except KeyboardInterrupt:
            write("")  # end the prompt's line before the run says it was interrupted
            raise
        if line.strip() == STOP:
            return
        if not line.strip():
            write("Query should not be empty!")
            continue
        number += 1
        yield Query(number, line, interactive=True)


def shared_queries(queries: Iterator[Query] | None) -> Iterator[Query]:
    """Rank 0's queries, broadcast to every process (model-parallel ranks must all run the same query).

    Only rank 0 passes an iterator; the others pass None and receive.
    """
    while True:
        box = [next(queries, None) if queries is not None else None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            return
        yield box[0]


def check_id(query_id: str) -> str:
    """A ``--with-id`` id, accepted only if it is a plain folder name (it becomes ``{output-path}/{id}``)."""
    separators = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if not query_id or query_id == "." or ".." in query_id or "\0" in query_id:
        raise QueryError(f"id {query_id!r} is not a folder name: it must be non-empty, without '..'")
    if any(sep in query_id for sep in separators):
        raise QueryError(f"id {query_id!r} is not a folder name: it must not contain '/' or '\\'")
    size = len(query_id.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise QueryError(
            f"id {query_id[:20]!r}... is {size} bytes long: at most {MAX_ID_BYTES} fit in a folder name"
        )
    return query_id


def split_fields(
    query: Query, names: Sequence[str], *, repeat_last: bool = False, with_id: bool = False
) -> tuple[str | None, list[str]]:
    """The query's id (with ``with_id``, else None) and its TAB fields, checked against ``names``.

    ``names`` names the fields the task takes (e.g. ``("text", "image path")``); with ``repeat_last`` the last
    one may repeat. Fields are stripped of surrounding spaces and trailing empty fields are dropped.
    """
    fields = [field.strip() for field in query.line.split("\t")]
    while fields and not fields[-1]:
        fields.pop()
    query_id = check_id(fields.pop(0)) if with_id and fields else None
    expected = ", ".join(names) + (", ..." if repeat_last else "")
    too_few, too_many = len(fields) < len(names), len(fields) > len(names) and not repeat_last
    if too_few or too_many:
        prefix = "an id and " if with_id else ""
        count = f"at least {len(names)}" if repeat_last else str(len(names))
        raise QueryError(
            f"expected {prefix}{count} TAB-separated field{'s' * (len(names) > 1)} ({expected}), "
            f"got {len(fields)}"
        )
    for index, field in enumerate(fields):
        if not field:
            name = names[min(index, len(names) - 1)]
            raise QueryError(f"field {index + 1} ({name}) is empty")
    return query_id, fields
