"""The shared low-level pieces: atomic writes, device names, the input-error base, and the query loop."""

import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common import atomic_files, memory
from common.atomic_files import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    write_atomic,
    write_new,
)
from common.devices import DeviceError, cpu_has_fast_bf16, parse_device, process_device, resolve_device
from common.errors import InputError, MissingInputError
from data_utils.unified_tokenizer import QueryError
from generation.inputs import Query
from generation.results import ResultsFile
from generation.tasks.base import QueryResult, Task
from generation.tasks.runner import as_slots, run_queries


def test_atomic_text_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "results.txt"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second ✓\n")
    assert path.read_text(encoding="utf-8") == "second ✓\n"
    assert [p.name for p in path.parent.iterdir()] == ["results.txt"]


def test_write_atomic_by_path_keeps_the_suffix_for_pil(tmp_path):
    from PIL import Image

    path = write_atomic(
        tmp_path / "red.png", lambda temporary: Image.new("RGB", (2, 2), "red").save(temporary)
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.getpixel((1, 1)) == (255, 0, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["red.png"]


def test_atomic_write_gives_an_ordinary_file_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write_bytes(tmp_path / "x.bin", b"\x00\x01")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"x": torch.ones(2)}, path)

    def interrupted(obj, file):
        file.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"x": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_the_rename_is_made_durable(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    atomic_write_text(tmp_path / "a.txt", "a")
    assert synced[-1] == str(tmp_path)  # the folder, after the file itself
    assert Path(synced[-2]).parent == tmp_path


def test_write_new_takes_the_next_free_name_with_the_suffix_kept(tmp_path):
    suffixes = []
    for _ in range(2):
        write_new(tmp_path, "img", ".png", lambda temporary: suffixes.append(temporary.suffix))
    assert suffixes == [".png", ".png"]  # PIL picks the format from the temporary name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img-1.png", "img.png"]
    assert next(atomic_files.numbered_names("a", ".x")) == "a.x"


@pytest.mark.parametrize(
    ("text", "name"),
    [("cpu", "cpu"), (" CUDA ", "cuda"), ("cuda:3", "cuda:3"), ("1", "cuda:1"), ("cuda:01", "cuda:1")],
)
def test_parse_device(text, name):
    assert parse_device(text) == name


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "-1", "mps0", ""])
def test_parse_device_refuses_with_one_line(text):
    with pytest.raises(DeviceError, match="is not a device: use cpu, cuda, cuda:N or a GPU index N"):
        parse_device(text)


def test_resolve_device_and_process_device(monkeypatch):
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cuda", 5)) == torch.device("cuda", 5)
    assert resolve_device(2) == torch.device("cuda", 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert process_device("cuda", local_rank=3) == torch.device("cuda", 1)
    assert process_device("cuda:0", local_rank=3) == torch.device("cuda", 0)
    assert process_device("cpu", local_rank=3) == torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "fast"),
    [
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
        ("fpu avx2 avx512f", False),
    ],
)
def test_cpu_has_fast_bf16_reads_the_cpu_flags(tmp_path, flags, fast):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_fast_bf16(str(cpuinfo)) is fast
    assert cpu_has_fast_bf16(str(tmp_path / "missing")) is False


def test_input_errors_share_one_base_and_keep_the_old_bases():
    from data_utils.datasets import DatasetNotFoundError
    from generation.inputs import InputFileError
    from model.checkpoint import CheckpointError
    from vqvae.images import ImageReadError

    for error in (QueryError, InputFileError, ImageReadError, CheckpointError, DeviceError):
        assert issubclass(error, InputError) and issubclass(error, ValueError)
    assert issubclass(DatasetNotFoundError, MissingInputError) and issubclass(
        DatasetNotFoundError, FileNotFoundError
    )


def _context():
    model = SimpleNamespace(word_embeddings=SimpleNamespace(weight=torch.zeros(1)))
    return SimpleNamespace(model=model, generator=None)


def test_runner_counts_bad_queries_and_lets_bugs_through(tmp_path):
    def run(ctx, fields):
        if fields[0] == "bad":
            raise QueryError("the query is bad")
        if fields[0] == "bug":
            raise ValueError("7 is not divisible by 2")  # what mpu.divide raises
        return QueryResult(line=fields[0].upper())

    task = Task("echo", ("text",), run, results_file="echo.txt")
    results = ResultsFile(tmp_path, task.results_file)
    slots = as_slots([Query(1, "good"), Query(2, "bad")])
    summary = run_queries(_context(), task, slots, None, results)
    assert (summary.done, summary.failures) == (2, 1)
    assert summary.results_path.read_text(encoding="utf-8") == "GOOD\nerror: the query is bad\n"
    with pytest.raises(ValueError, match="not divisible"):
        run_queries(_context(), task, as_slots([Query(1, "good"), Query(2, "bug")]), None, None)


def test_available_memory_is_read_from_meminfo_or_none(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   12345 kB\n", encoding="utf-8")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    assert memory.available_memory_bytes() == 12345 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n", encoding="utf-8")  # an old kernel: no such field
    assert memory.available_memory_bytes() is None
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "absent")  # no /proc
    assert memory.available_memory_bytes() is None


_REFAULT_PROBE = """
import resource, sys
import torch
from common.malloc import keep_freed_memory
tuned = sys.argv[1] == "tuned" and keep_freed_memory()
def step():  # a 64 MiB and a 32 MiB tensor, both at least glibc's mmap threshold, freed at the end
    return float(torch.ones(1 << 24).sum() + torch.ones(1 << 23).sum())
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="page-fault counts need Linux")
def test_keep_freed_memory_reuses_large_tensors_without_faulting_them_in_again():
    """By default every step faults its 24576 pages in again; tuned, most steps reuse the freed memory.

    Not every step: PyTorch's aligned allocation asks for a little more than a freed block of the same
    size holds, so a block that cannot merge with the heap's top is passed over (over 24 runs at most one
    step in three faulted again).
    """
    repo = Path(__file__).resolve().parent.parent

    def faults(mode):
        result = subprocess.run(
            [sys.executable, "-c", _REFAULT_PROBE, mode], cwd=repo, capture_output=True, text=True, check=True
        )
        tuned, count = map(int, result.stdout.split())
        return bool(tuned), count

    tuned, plain_count = faults("plain")
    assert not tuned and plain_count >= 3 * 24576
    tuned, count = faults("tuned")
    assert tuned and count < plain_count / 2


def test_the_launchers_default_device_is_torchs_and_needs_no_torch_without_a_gpu_driver():
    from common.default_device import default_device_name, driver_sees_a_gpu

    assert default_device_name() == ("cuda" if torch.cuda.is_available() else "cpu")
    if driver_sees_a_gpu():
        pytest.skip("this machine has a CUDA driver: torch is asked")
    probe = (
        "import runpy, sys; runpy.run_module('common.default_device', run_name='__main__'); "
        "print('torch' in sys.modules)"
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True)
    assert done.stdout.split() == ["cpu", "False"], done.stderr
