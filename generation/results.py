"""A task's per-line results file (captions, scores, raw completions), written as the run goes.

Line n of the file answers line n of the input (empty for a blank input line, ``error: ...`` for a failed
query). Each line is appended, flushed and fsynced as soon as the lines before it are known, so a run that
is interrupted or crashes keeps every result it finished, in place. A rerun never replaces an earlier
run's file: the first free name among ``captions.txt``, ``captions-1.txt``, ... is taken (created
exclusively, so two runs at once cannot share one), the way image folders are named.
"""

import os
from pathlib import Path
from typing import IO

import torch.distributed as dist

from common.atomic_files import numbered_names


class ResultsFile:
    """Appends result lines in input order under ``folder``; the file is created with the first line.

    ``record(n, line)`` may come in any order (several processes finish lines at different times): a line
    waits until every line before it is known, then all that are ready are appended.
    """

    def __init__(self, folder: str | os.PathLike, name: str):
        self.folder = Path(folder)
        self.stem, self.suffix = os.path.splitext(name)
        self.path: Path | None = None  # known once the file exists
        self.written = 0  # lines 1..written are in the file
        self._pending: dict[int, str] = {}
        self._file: IO[str] | None = None

    def record(self, number: int, line: str | None) -> None:
        """Set the result of input line ``number`` (1-based); None for a line without one (blank input).

        A line already written is ignored (model-parallel ranks report the same lines).
        """
        if number <= self.written:
            return
        self._pending[number] = "" if line is None else " ".join(line.splitlines())
        ready = []
        while self.written + len(ready) + 1 in self._pending:
            ready.append(self._pending.pop(self.written + len(ready) + 1))
        if ready:
            file = self._open()
            file.write("".join(f"{text}\n" for text in ready))
            file.flush()
            os.fsync(file.fileno())
            self.written += len(ready)

    def _open(self) -> IO[str]:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for name in numbered_names(self.stem, self.suffix):
                try:
                    self._file = open(self.folder / name, "x", encoding="utf-8")  # noqa: SIM115
                except FileExistsError:
                    continue
                self.path = self.folder / name
                break
        return self._file

    def close(self) -> None:
        """Close the file (the lines still waiting for earlier ones are not written)."""
        if self._file is not None:
            self._file.close()


def gather_results(entries: list[tuple[int, str | None]]) -> list[tuple[int, str | None]]:
    """Every process's ``(line number, result)`` pairs of one round, on every process (collective).

    Without ``torch.distributed`` the entries come back as they are.
    """
    if not dist.is_initialized():
        return entries
    gathered: list[list[tuple[int, str | None]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, entries)
    return [entry for rank_entries in gathered for entry in rank_entries or []]
