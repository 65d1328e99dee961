"""How much memory the machine has available: the one reader of ``MemAvailable``."""

from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux) in bytes: what can be allocated without swapping.

    None where the system does not report it (no ``/proc``, or a kernel without the field).
    """
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None
