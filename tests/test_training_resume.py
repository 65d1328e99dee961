"""Exact resume: a run killed with SIGKILL and resumed logs bit-identical losses to an uninterrupted run
(fp32 on the CPU, dropout on, so the RNG states and the data position must come back exactly)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.distributed import run_distributed
from tests.helpers.training import logged, run_folder, train_argv, write_dataset, write_ds_config
from tests.test_training_distributed import _copy_checkpoint, _run

REPO_ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 10


def _command(data: Path, config: Path, save: Path, log: Path, *extra: str) -> list[str]:
    argv = train_argv(data, "--train-iters", str(ITERATIONS), "--save-interval", "3",
                      "--save", str(save), "--log-file", str(log),
                      "--deepspeed", "--deepspeed_config", str(config), *extra)  # fmt: skip
    return [sys.executable, str(REPO_ROOT / "pretrain_gpt2.py"), *argv]


def _environment() -> dict[str, str]:
    """A plain single-process start: no launcher variables (the run picks a free port itself)."""
    launcher = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    environment = {key: value for key, value in os.environ.items() if key not in launcher}
    return {**environment, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    data = write_dataset(tmp_path / "data.lmdb")
    config = write_ds_config(tmp_path / "zero2.json", zero_optimization={"stage": 2})
    full_log, killed_log, resumed_log = (tmp_path / f"{name}.jsonl" for name in ("full", "killed", "resumed"))
    subprocess.run(_command(data, config, tmp_path / "full", full_log), env=_environment(), check=True,
                   capture_output=True, timeout=300)  # fmt: skip

    process = subprocess.Popen(_command(data, config, tmp_path / "killed", killed_log), env=_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if killed_log.exists() and max(logged(killed_log), default=0) >= 5:  # past the save at 3
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    run = run_folder(tmp_path / "killed")
    resumed = subprocess.run(
        _command(data, config, tmp_path / "killed", resumed_log, "--load", str(run)),
        env=_environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    full, before, after = logged(full_log), logged(killed_log), logged(resumed_log)
    start = min(after)
    assert start in (4, 7) and sorted(after) == list(range(start, ITERATIONS + 1))
    assert {i: before[i] for i in range(1, start)} == {i: full[i] for i in range(1, start)}
    assert after == {i: full[i] for i in range(start, ITERATIONS + 1)}  # exact, not approximate
    assert logged(resumed_log, "lr") == {i: logged(full_log, "lr")[i] for i in after}


def test_plain_torch_resume_equals_an_uninterrupted_run(tmp_path):
    data = write_dataset(tmp_path / "data.lmdb", count=16)

    def run(name, *extra):
        return train_argv(data, "--train-iters", "4", "--save-interval", "2", "--batch-size", "2",
                          "--save", str(tmp_path / name), "--log-file", str(tmp_path / f"{name}.jsonl"),
                          *extra)  # fmt: skip

    run_distributed(_run, 1, [run("full")])
    start = _copy_checkpoint(run_folder(tmp_path / "full"), 2, tmp_path / "at-2" / "run")
    run_distributed(_run, 1, [run("resumed", "--load", str(start))])
    full, resumed = logged(tmp_path / "full.jsonl"), logged(tmp_path / "resumed.jsonl")
    assert resumed == {3: full[3], 4: full[4]}
