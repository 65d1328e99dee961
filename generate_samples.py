"""Generate with CogView: text → image, image → text, super-resolution, post-selection, raw queries.

    python generate_samples.py --generation-task text2image --input-source input.txt --top_k 200 \\
        --load pretrained/cogview/cogview-base --num-layers 48 --hidden-size 2560 --num-attention-heads 40 \\
        --img-tokenizer-path pretrained/vqvae/vqvae_hard_biggerset_011.pt --max-position-embeddings 1089

The scripts in ``scripts/`` carry the released models' arguments. Exit status: 0 when every query
succeeded, 1 when some failed (each reported on its own line), 2 when the run could not start.
This file only wires things together: the work is in ``generation/``.
"""

import argparse
import sys
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

import mpu
from arguments import get_args
from common.errors import InputError
from generation.inputs import Query, interactive_queries, read_query_file, shared_queries
from generation.outputs import ImageWriter
from generation.runtime import (
    build_model,
    build_tokenizer,
    check_weights,
    init_device,
    init_distributed,
    model_dtype,
    set_random_seed,
)
from generation.tasks import TASKS, TaskContext
from generation.tasks.base import code_grid_side
from generation.tasks.runner import run_queries, write_results
from model import GPT2Model

INTERACTIVE = "interactive"


def read_queries(args: argparse.Namespace) -> tuple[Iterable[Query], int | None]:
    """This process's queries, and the file's number of lines (None for the interactive prompt)."""
    if args.input_source != INTERACTIVE:
        rank, size = mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size()
        return read_query_file(args.input_source, rank, size)
    if mpu.get_data_parallel_world_size() > 1:
        raise InputError(
            "--input-source interactive runs one model copy; use a query file to share work among processes"
        )
    if args.world_size == 1:
        return interactive_queries(), None
    return shared_queries(interactive_queries() if args.rank == 0 else None), None


def build_caption_model(args: argparse.Namespace, num_tokens: int, device: torch.device) -> GPT2Model | None:
    """The ``--post-select-load`` caption model, when text2image post-selection uses a second checkpoint.

    None otherwise: the task then scores with the main model (trained on both layouts, or, for the
    post-selection task, the caption model itself).
    """
    if args.post_select == 1 or args.post_select_load is None:
        return None
    return build_model(args, num_tokens, device, model_dtype(args), load=args.post_select_load)


def main(argv: Sequence[str] | None = None) -> int:
    """Run generation with ``argv`` (default: the command line) and return the exit status."""
    args = get_args(argv)
    device = init_device(args)
    created_group = init_distributed(args, device)
    try:
        return generate(args, device)
    finally:
        if created_group:
            dist.barrier()
            dist.destroy_process_group()


def generate(args: argparse.Namespace, device: torch.device) -> int:
    """Load what ``args`` names, run every query through the task, write the results; the exit status."""
    task = TASKS[args.generation_task]
    try:
        check_weights(args)
        queries, num_lines = read_queries(args)
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
            caption_model=build_caption_model(args, tokenizer.num_tokens, device),
        )
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    writer = ImageWriter(args.output_path, args.debug) if mpu.get_model_parallel_rank() == 0 else None
    failures, results = run_queries(
        ctx,
        task,
        queries,
        writer,
        with_id=args.with_id,
        seed=args.seed,
        total=len(queries) if num_lines is not None else None,
    )
    path = write_results(task, results, args.output_path, num_lines or 0)
    if path is not None:
        print(f"results: {path}")
    if failures:
        print(
            f"{failures} quer{'y' if failures == 1 else 'ies'} failed (see the error lines above)",
            file=sys.stderr,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
