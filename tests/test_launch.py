"""The launchers: two "nodes" on 127.0.0.1 train exactly as one launcher running two processes.

Both runs go through the shell scripts users run (scripts/pretrain_multiple_nodes.sh with DeepSpeed's
``--no_ssh --node_rank``, one launcher per node; scripts/pretrain_single_node.sh with two processes),
on the CPU, where the scripts fall back to gloo and fp32.
"""

import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

# pretrain_gpt2.py and its test helpers come from the training work (branch i10a), merged separately.
pytest.importorskip("training.step", reason="pretrain_gpt2.py's training package is not merged yet")
from tests.helpers.training import (
    logged,
    run_folder,
    train_argv,
    write_dataset,
    write_ds_config,
)

REPO = Path(__file__).resolve().parent.parent
ITERATIONS = 3
CPU_FALLBACK_LINE = "pretrain: no GPU here: training on the CPU (gloo, 1 process per node, fp32)"


def unused_port() -> int:
    """A port nothing listens on now, for DeepSpeed's launchers to meet on.

    The launchers bind it themselves, so it must be released first; another process could take it in
    between, which on a test machine is rare enough.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script: str, save: Path, data: Path, ds_config: Path, **env: str) -> subprocess.Popen:
    """Start ``scripts/{script}`` on the tiny model and `data`, saving under `save`."""
    environment = {
        **os.environ,
        "DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(unused_port()),
        "DATA_PATH": str(data),
        "DATASET_TYPE": "TokenizedDataset",
        "DS_CONFIG": str(ds_config),
        "SAVE_DIR": str(save),
        **env,
    }
    argv = train_argv(data, "--train-iters", str(ITERATIONS), "--save-interval", str(ITERATIONS))
    argv += ["--txt-loss-scale", "5", "--log-file", f"{save}.jsonl"]  # the two tutorials differ here
    return subprocess.Popen(
        ["bash", str(REPO / "scripts" / script), *argv],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-4000:]
    return output


def saved_state(save: Path) -> dict:
    """What the run under `save` checkpointed at its last iteration (weights, optimizer, counters, RNG)."""
    folder = run_folder(save)
    iteration = (folder / "latest_checkpointed_iteration.txt").read_text().strip()
    assert iteration == str(ITERATIONS)
    path = folder / iteration / "mp_rank_00_model_states.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own test file
    keys = ["module", "optimizer", "iteration", "global_samples", "dp_world_size", "consumed_train_samples"]
    return {key: state[key] for key in [*keys, "torch_rng_state"]}


def assert_identical(expected, actual, where: str = "checkpoint") -> None:
    """Tensors bit for bit, containers key by key, everything else by equality."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_identical(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


@pytest.mark.slow
def test_two_nodes_on_one_machine_equal_one_launcher_with_two_processes(tmp_path):
    data = write_dataset(tmp_path / "data.lmdb")
    ds_config = write_ds_config(tmp_path / "ds_config.json")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")

    single = launch("pretrain_single_node.sh", tmp_path / "single", data, ds_config, NUM_GPUS_PER_WORKER="2")
    single_output = finish(single)
    port = str(unused_port())
    nodes = []
    for rank in (0, 1):
        launcher_args = f"--no_ssh --node_rank {rank} --master_addr 127.0.0.1"
        environment = {"NUM_GPUS_PER_WORKER": "1", "HOST_FILE_PATH": str(hostfile), "MASTER_PORT": port}
        environment["LAUNCHER_ARGS"] = launcher_args
        nodes.append(launch("pretrain_multiple_nodes.sh", tmp_path / "nodes", data, ds_config, **environment))
    node_outputs = [finish(node) for node in nodes]

    assert "pretrain: no GPU here: training on the CPU (gloo, 2 processes per node, fp32)" in single_output
    assert all(CPU_FALLBACK_LINE in output for output in node_outputs)
    # one world of two processes each time: the nodes' launchers found each other
    assert "nnodes=1, num_local_procs=2, node_rank=0" in single_output
    for rank, output in enumerate(node_outputs):
        assert f"nnodes=2, num_local_procs=1, node_rank={rank}" in output
    assert all("dist_world_size=2" in output for output in [single_output, *node_outputs])
    single_losses = logged(tmp_path / "single.jsonl")
    node_losses = logged(tmp_path / "nodes.jsonl")
    assert sorted(single_losses) == list(range(1, ITERATIONS + 1))
    assert node_losses == single_losses  # exact: the same ranks, data and reductions

    single_state, node_state = saved_state(tmp_path / "single"), saved_state(tmp_path / "nodes")
    assert single_state["dp_world_size"] == 2 and single_state["optimizer"]["state"]
    assert_identical(single_state, node_state)


def test_multiple_nodes_without_a_hostfile_is_one_line(tmp_path):
    missing = tmp_path / "hostfile"
    environment = {**os.environ, "DEVICE": "cpu", "HOST_FILE_PATH": str(missing)}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "pretrain_multiple_nodes.sh")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"pretrain: hostfile {missing} not found")


def launched_command(tmp_path: Path, *argv: str) -> str:
    """The pretrain_gpt2.py command line scripts/pretrain_single_node.sh prints before it starts."""
    environment = {**os.environ, "DEVICE": "cpu", "DATA_PATH": str(tmp_path / "missing.lmdb")}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "pretrain_single_node.sh"), "--train-iters", "1", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0  # the data do not exist
    return next(line for line in result.stderr.splitlines() if "pretrain_gpt2.py" in line)


@pytest.mark.slow
def test_own_image_tokenizer_replaces_the_released_codebook_size(tmp_path):
    assert "--img-tokenizer-num-tokens 8192" in launched_command(tmp_path)
    own = tmp_path / "vqvae.pt"
    command = launched_command(tmp_path, "--img-tokenizer-path", str(own))
    assert "--img-tokenizer-num-tokens" not in command
    assert f"--img-tokenizer-path {own}" in command
