"""Who this process is in a multi-process job: its rank, the world size and its local rank.

Read from the launcher's environment, in the original's order: ``RANK``/``WORLD_SIZE`` (defaults 0/1),
then, with ``--deepspeed_mpi``, MPI itself (mpi4py), else OpenMPI's ``mpirun`` variables with optional
SLURM node variables. ``LOCAL_RANK`` (set by torchrun) fills in a local rank the launcher did not pass.
"""

import os
import subprocess
from dataclasses import dataclass

import torch.distributed as dist

from common.errors import InputError

MPI_MASTER_PORT = "29500"


class LauncherEnvError(InputError):
    """A launcher variable that is not an integer, or an incomplete or unusable launcher set-up."""


@dataclass(frozen=True)
class ProcessEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int | None


def env_int(name: str, default: int | None = None) -> int | None:
    """Integer environment variable ``name``, ``default`` when unset or empty."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise LauncherEnvError(f"environment variable {name}={raw!r} is not an integer") from None


def discover_process_env(local_rank: int | None = None, use_mpi: bool = False) -> ProcessEnv:
    """The rank, world size and local rank of this process (``local_rank``: the launcher's argument).

    With ``use_mpi`` the ranks come from MPI, and ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` are written to the environment for ``torch.distributed``.
    """
    if local_rank is None:
        local_rank = env_int("LOCAL_RANK")
    if use_mpi:
        return _from_mpi()
    if os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK"):
        return _from_openmpi()
    return ProcessEnv(env_int("RANK", 0), env_int("WORLD_SIZE", 1), local_rank)


def _from_openmpi() -> ProcessEnv:
    """Ranks under mpirun: OpenMPI gives the local rank and size, SLURM (if any) the node count and id."""
    local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK")
    local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE")
    if local_size is None:
        raise LauncherEnvError("OMPI_COMM_WORLD_LOCAL_RANK is set but OMPI_COMM_WORLD_LOCAL_SIZE is not")
    num_nodes = env_int("SLURM_JOB_NUM_NODES", 1)
    node_id = env_int("SLURM_NODEID", 0)
    return ProcessEnv(node_id * local_size + local_rank, num_nodes * local_size, local_rank)


def _first_host_address() -> str:
    """This host's first IP address (``hostname -I``), used as the MPI master address."""
    return subprocess.run(["hostname", "-I"], check=True, capture_output=True, text=True).stdout.split()[0]


def _from_mpi() -> ProcessEnv:
    """Ranks from MPI; the master is rank 0's address on port 29500.

    The local rank counts the lower ranks on the same host (host names assumed unique per node). Also
    writes ``LOCAL_RANK`` (added), which current DeepSpeed requires.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        raise LauncherEnvError("--deepspeed_mpi needs the mpi4py package, which is not installed") from None
    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    master_addr = comm.bcast(_first_host_address() if rank == 0 else None, root=0)
    host = MPI.Get_processor_name()
    local_rank = comm.allgather(host)[:rank].count(host)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR=master_addr,
        MASTER_PORT=MPI_MASTER_PORT,
    )
    return ProcessEnv(rank, world_size, local_rank)


def print_rank_0(message: str) -> None:
    """Print on global rank 0 only (on every process before ``torch.distributed`` is initialised)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        print(message, flush=True)
