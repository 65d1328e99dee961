"""The query loop: run each query through a task, save what it made, and report and count failed queries.

A bad query (missing TAB fields, an unreadable image, a prompt longer than the model takes) prints one
line naming its input line and the run goes on; the caller turns the failure count into the exit status.
"""

import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from common.errors import InputError
from generation.inputs import Query, split_fields
from generation.outputs import AlignedLines, ImageWriter
from generation.tasks.base import Task, TaskContext


def query_generator(seed: int, number: int, device: torch.device) -> torch.Generator:
    """The sampling generator of query ``number``: seeded with ``seed + number``.

    A query's samples thus depend only on ``--seed`` and its line number, not on the queries before it
    or on how many processes share the file.
    """
    return torch.Generator(device=device).manual_seed(seed + number)


def _saved(paths: list[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} images in {paths[0].parent}"


def run_queries(
    ctx: TaskContext,
    task: Task,
    queries: Iterable[Query],
    writer: ImageWriter | None,
    *,
    with_id: bool = False,
    seed: int = 0,
    total: int | None = None,
) -> tuple[int, AlignedLines]:
    """Run every query; returns the number that failed and the result lines (for ``task.results_file``).

    ``writer`` saves the images (None on processes that must not write, e.g. model-parallel ranks > 0).
    ``total`` (the number of queries, when known) shows a progress bar over the queries.
    """
    failures, results = 0, AlignedLines()
    device = ctx.model.word_embeddings.weight.device
    for query in tqdm(queries, total=total, disable=total is None, desc=task.name, unit="query"):
        start = time.perf_counter()
        try:
            query_id, fields = split_fields(query, task.fields, repeat_last=task.repeat_last, with_id=with_id)
            ctx.generator = query_generator(seed, query.number, device)
            result = task.run(ctx, fields)
        except InputError as error:  # a bad query; anything else is a bug and ends the run
            failures += 1
            tqdm.write(f"error: {query.where}: {error}", file=sys.stderr)
            results.record(query.number, f"error: {error}")
            continue
        paths = writer.save(result.samples, result.debug_images, fields[0], query_id) if writer else []
        for line in result.report:
            tqdm.write(f"{query.where}: {line}")
        saved = f", saved {_saved(paths)}" if paths else ""
        tqdm.write(f"{query.where}: done in {time.perf_counter() - start:.1f} s{saved}")
        if result.line is not None:
            results.record(query.number, result.line)
    return failures, results


def write_results(task: Task, results: AlignedLines, output_path: str | Path, total: int = 0) -> Path | None:
    """Write ``task.results_file`` under ``output_path``, line n answering input line n.

    With several processes every rank's lines are gathered and rank 0 writes the file. Returns its path
    (None where nothing was written).
    """
    if task.results_file is None:
        return None
    if dist.is_initialized():
        gathered: list[dict[int, str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, results.lines)
        for lines in gathered:
            results.merge(lines or {})
        if dist.get_rank() != 0:
            return None
    Path(output_path).mkdir(parents=True, exist_ok=True)
    return results.write(Path(output_path) / task.results_file, total)
