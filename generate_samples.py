"""Generate with CogView: text → image, image → text, super-resolution, post-selection, raw queries.

    python generate_samples.py --generation-task text2image --input-source input.txt --top_k 200 \\
        --load pretrained/cogview/cogview-base --num-layers 48 --hidden-size 2560 --num-attention-heads 40 \\
        --img-tokenizer-path pretrained/vqvae/vqvae_hard_biggerset_011.pt --max-position-embeddings 1089

The scripts in ``scripts/`` carry the released models' arguments. Exit status: 0 when every query
succeeded, 1 when some failed (each reported on its own line), 2 when the run could not start, 130 when
Ctrl-C stopped it (every finished result is kept; the last line says how far it got).
This file only wires things together: the work is in ``generation/``.
"""

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

import mpu
from arguments import get_args
from common.errors import InputError
from common.output_folders import check_writable_folder
from generation.inputs import Slot, file_slots, interactive_queries, read_query_file, shared_queries
from generation.outputs import ImageWriter
from generation.results import ResultsFile
from generation.runtime import (
    build_model,
    build_tokenizer,
    check_weights,
    init_device,
    init_distributed,
    model_dtype,
    set_random_seed,
)
from generation.sampling import SamplingConfig
from generation.tasks import TASKS, TaskContext
from generation.tasks.base import code_grid_side
from generation.tasks.runner import RunSummary, as_slots, run_queries
from model import GPT2Model

INTERACTIVE = "interactive"
INTERRUPTED = 130  # the exit status of a process stopped by Ctrl-C (128 + SIGINT)


def read_slots(args: argparse.Namespace) -> tuple[Iterable[Slot], int | None]:
    """This process's slots of the query loop, and its number of queries (None for the interactive prompt)."""
    if args.input_source != INTERACTIVE:
        rank, size = mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()
        queries, num_lines = read_query_file(args.input_source, rank, size)
        return file_slots(queries, num_lines, rank, size), len(queries)
    if mpu.get_data_parallel_world_size() > 1:
        raise InputError(
            "--input-source interactive runs one model copy; use a query file to share work among processes"
        )
    if args.world_size == 1:
        return as_slots(interactive_queries()), None
    return as_slots(shared_queries(interactive_queries() if args.rank == 0 else None)), None


def build_caption_models(
    args: argparse.Namespace, model: GPT2Model, num_tokens: int, device: torch.device
) -> tuple[GPT2Model, ...]:
    """The ``--post-select-load`` caption models, when text2image post-selection uses their checkpoints.

    A folder that is ``--load``'s own is served by ``model`` rather than loaded twice. Empty otherwise:
    the task then scores with the main model (trained on both layouts, or, for the post-selection task,
    the caption model itself).
    """
    if args.post_select == 1 or args.post_select_load is None:
        return ()
    main_folder = Path(args.load).resolve()
    return tuple(
        model
        if Path(folder).resolve() == main_folder
        else build_model(args, num_tokens, device, model_dtype(args), load=folder)
        for folder in args.post_select_load
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run generation with ``argv`` (default: the command line) and return the exit status."""
    args = get_args(argv)
    device = init_device(args)
    created_group = init_distributed(args, device)
    status = INTERRUPTED
    try:
        status = generate(args, device)
    except KeyboardInterrupt:
        print("interrupted before the first query; nothing was generated", file=sys.stderr)
    finally:
        if created_group:
            if status != INTERRUPTED:
                dist.barrier()
            dist.destroy_process_group()
    return status


def generate(args: argparse.Namespace, device: torch.device) -> int:
    """Check and load what ``args`` names, run every query through the task; the exit status.

    Everything that can be checked without the model (sampling options, files, the output folder) is
    checked before the model is loaded, so a typo costs seconds, not a model load.
    """
    task = TASKS[args.generation_task]
    try:
        SamplingConfig.of(args)  # checks the sampling options and batch sizes
        check_weights(args)
        slots, total = read_slots(args)
        check_writable_folder(args.output_path, f"--output-path {args.output_path}")
        set_random_seed(args.seed, device)
        if device.type == "cpu" and (args.fp16 or args.bf16):
            print("warning: half precision is very slow on most CPUs; fp32 is the default", file=sys.stderr)
        tokenizer = build_tokenizer(args, device)
        image_size = args.image_size
        code_grid_side(tokenizer, image_size)  # fail before the (slow) model load
        model = build_model(args, tokenizer.num_tokens, device, model_dtype(args))
        ctx = TaskContext(
            model,
            tokenizer,
            args,
            image_size=image_size,
            progress=True,
            guidance_scale=args.guidance_scale,
            post_select=args.post_select,
            caption_models=build_caption_models(args, model, tokenizer.num_tokens, device),
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    writer = ImageWriter(args.output_path, args.debug) if mpu.get_model_parallel_rank() == 0 else None
    writes_results = task.results_file is not None and (not dist.is_initialized() or dist.get_rank() == 0)
    results = ResultsFile(args.output_path, task.results_file) if writes_results else None
    summary = run_queries(
        ctx, task, slots, writer, results, with_id=args.with_id, seed=args.seed, total=total
    )
    return report(summary, total)


def report(summary: RunSummary, total: int | None) -> int:
    """Print where the results are and how the run went; the exit status (0, 1 some failed, 130 Ctrl-C)."""
    if summary.results_path is not None:
        print(f"results: {summary.results_path}")
    if summary.failures:
        noun = "query" if summary.failures == 1 else "queries"
        print(f"{summary.failures} {noun} failed (see the error lines above)", file=sys.stderr)
    if summary.interrupted:
        where = f" during {summary.interrupted_at}" if summary.interrupted_at else ""
        done = f"{summary.done} of {total}" if total is not None else str(summary.done)
        noun = "query" if (summary.done if total is None else total) == 1 else "queries"
        kept = f"; their results are in {summary.results_path}" if summary.results_path else ""
        print(f"interrupted{where}: {done} {noun} finished{kept}", file=sys.stderr)
        return INTERRUPTED
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
