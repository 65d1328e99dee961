"""The query loop: run each query through a task, save what it made, and report and count failed queries.

A bad query (missing TAB fields, an unreadable image, a prompt longer than the model takes) and a query
whose outputs cannot be saved print one line naming its input line, and the run goes on; the caller turns
the failure count into the exit status. Results lines are appended to the task's results file as each
query finishes, so Ctrl-C (or a crash) keeps everything finished; Ctrl-C ends the loop cleanly and the
summary says where it stopped.
"""

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from common.errors import InputError
from generation.inputs import Query, Slot, split_fields
from generation.outputs import ImageWriter
from generation.results import ResultsFile, gather_results
from generation.tasks.base import Task, TaskContext


def query_generator(seed: int, number: int, device: torch.device) -> torch.Generator:
    """The sampling generator of query ``number``: seeded with ``seed + number``.

    A query's samples thus depend only on ``--seed`` and its line number, not on the queries before it
    or on how many processes share the file.
    """
    return torch.Generator(device=device).manual_seed(seed + number)


def _saved(paths: list[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} images in {paths[0].parent}"


@dataclass
class RunSummary:
    """How a run of queries went: counts, where an interruption stopped it, where the results are."""

    done: int = 0  # queries finished, failed ones included
    failures: int = 0
    interrupted: bool = False  # Ctrl-C stopped the run
    interrupted_at: str | None = None  # 'line 5' when that happened during a query
    results_path: Path | None = None


def as_slots(queries: Iterable[Query]) -> Iterable[Slot]:
    """Slots of queries that come one by one (the interactive prompt): each its own line."""
    return ((query.number, query) for query in queries)


def run_queries(
    ctx: TaskContext,
    task: Task,
    slots: Iterable[Slot],
    writer: ImageWriter | None,
    results: ResultsFile | None,
    *,
    with_id: bool = False,
    seed: int = 0,
    total: int | None = None,
) -> RunSummary:
    """Run the query of every slot; results lines go to ``results`` as soon as they are known.

    ``slots`` are this process's input lines in order (see :func:`generation.inputs.file_slots`); with
    several processes every one must get the same number of slots, since the lines of each round of
    slots are gathered and written by the process that holds ``results`` (None elsewhere). ``writer``
    saves the images (None on processes that must not write, e.g. model-parallel ranks > 0). ``total``
    (the number of queries, when known) shows a progress bar over the queries.
    """
    summary = RunSummary()
    device = ctx.model.word_embeddings.weight.device
    bar = tqdm(total=total, disable=total is None, desc=task.name, unit="query")
    running: Query | None = None  # the query under way, for the message if Ctrl-C stops it
    try:
        for slot in slots:
            entries: list[tuple[int, str | None]] = []
            if slot is not None:
                number, running = slot
                line = None
                if running is not None:
                    line, failed = _run_one(ctx, task, running, writer, with_id, seed, device)
                    running = None
                    summary.done += 1
                    summary.failures += failed
                    bar.update(1)
                entries.append((number, line))
            if task.results_file is not None:
                for number, line in gather_results(entries):
                    if results is not None:
                        results.record(number, line)
    except KeyboardInterrupt:
        summary.interrupted = True
        summary.interrupted_at = running.where if running is not None else None
    finally:
        bar.close()
        if results is not None:
            results.close()
            summary.results_path = results.path
    return summary


def _run_one(
    ctx: TaskContext,
    task: Task,
    query: Query,
    writer: ImageWriter | None,
    with_id: bool,
    seed: int,
    device: torch.device,
) -> tuple[str, bool]:
    """Run one query and save its images; its results line (``error: ...``) and whether it failed."""
    start = time.perf_counter()
    try:
        query_id, fields = split_fields(query, task.fields, repeat_last=task.repeat_last, with_id=with_id)
        ctx.generator = query_generator(seed, query.number, device)
        result = task.run(ctx, fields)
        try:
            paths = writer.save(result.samples, result.debug_images, fields[0], query_id) if writer else []
        except OSError as error:  # e.g. a name too long or a full disk: this query fails, the run goes on
            raise InputError(f"cannot save its images: {error}") from error
    except InputError as error:  # a bad query; anything else is a bug and ends the run
        tqdm.write(f"error: {query.where}: {error}", file=sys.stderr)
        return f"error: {error}", True
    for line in result.report:
        tqdm.write(f"{query.where}: {line}")
    saved = f", saved {_saved(paths)}" if paths else ""
    tqdm.write(f"{query.where}: done in {time.perf_counter() - start:.1f} s{saved}")
    return (result.line if result.line is not None else ""), False
