"""Run a test function in several gloo processes on 127.0.0.1 and collect what each rank returns."""

import datetime
import io
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(seconds=120)


def _rendezvous_store() -> dist.TCPStore:
    """The rendezvous server, listening on a port the OS picked and held open until the workers are done.

    Picking a free port and releasing it for the workers to bind would race with any other process that
    binds one in between; here nothing is released.
    """
    return dist.TCPStore("127.0.0.1", 0, None, True, timeout=TIMEOUT, wait_for_workers=False)


def _worker(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    try:
        store = dist.TCPStore("127.0.0.1", port, world_size, False, timeout=TIMEOUT)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=TIMEOUT)
        result = fn(rank, world_size, *args)
        buffer = io.BytesIO()  # plain bytes: shared-memory tensors would die with this process
        torch.save(result, buffer)
        queue.put((rank, "ok", buffer.getvalue()))
        dist.barrier()
    except BaseException:  # report any failure to the parent instead of hanging it
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        import mpu

        mpu.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` processes; return the results by rank.

    ``fn`` must be a module-level function (it is pickled into spawned processes). A failure on any
    rank fails the caller with that rank's traceback.
    """
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    store = _rendezvous_store()  # kept open (referenced) until every worker has finished
    processes = mp.start_processes(
        _worker,
        args=(world_size, store.port, fn, args, queue),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    results: dict[int, Any] = {}
    errors = []
    for _ in range(world_size):
        rank, status, payload = queue.get()
        if status == "ok":
            results[rank] = torch.load(io.BytesIO(payload), weights_only=False)  # our own test data
        else:
            errors.append(f"rank {rank} failed:\n{payload}")
    processes.join()
    del store
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[rank] for rank in range(world_size)]
