"""The command line of arguments.py: the original's names, types and defaults (reference §2) and the
post-processing of get_args (§2.10): sparse checks, device, ranks from the environment, DeepSpeed JSON."""

import argparse
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import arguments
from arguments import build_parser, get_args, parse_device

REPO_ROOT = Path(__file__).resolve().parent.parent

FLAG = "flag"

# Reference §2, table by table: option → (type, default). FLAG = store_true with default False.
ORIGINAL_ARGS = {
    # 2.1 model
    "--attention-dropout": (float, 0.1),
    "--num-attention-heads": (int, 16),
    "--hidden-size": (int, 1024),
    "--num-layers": (int, 24),
    "--layernorm-epsilon": (float, 1e-5),
    "--hidden-dropout": (float, 0.1),
    "--max-position-embeddings": (int, 512),
    "--vocab-size": (int, 30522),
    "--deep-init": (FLAG, False),
    "--make-vocab-size-divisible-by": (int, 128),
    "--cpu-optimizer": (FLAG, False),
    "--cpu_torch_adam": (FLAG, False),
    "--max-position-embeddings-finetune": (int, -1),
    # 2.2 fp16
    "--fp16": (FLAG, False),
    "--fp32-embedding": (FLAG, False),
    "--fp32-layernorm": (FLAG, False),
    "--fp32-tokentypes": (FLAG, False),
    "--fp32-allreduce": (FLAG, False),
    "--hysteresis": (int, 2),
    "--loss-scale": (float, None),
    "--loss-scale-window": (float, 1000),
    "--min-scale": (float, 1),
    # 2.3 train
    "--experiment-name": (str, "CogView"),
    "--batch-size": (int, 4),
    "--weight-decay": (float, 0.01),
    "--checkpoint-activations": (FLAG, False),
    "--checkpoint-num-layers": (int, 1),
    "--deepspeed-activation-checkpointing": (FLAG, False),
    "--clip-grad": (float, 1.0),
    "--train-iters": (int, 1000000),
    "--log-interval": (int, 50),
    "--exit-interval": (int, None),
    "--summary-dir": (str, ""),
    "--seed": (int, 1234),
    "--img-tokenizer-path": (str, None),
    "--img-tokenizer-num-tokens": (int, None),
    "--reset-position-ids": (FLAG, False),
    "--reset-attention-mask": (FLAG, False),
    "--lr-decay-iters": (int, None),
    "--lr-decay-style": (str, "linear"),
    "--lr-decay-ratio": (float, 0.1),
    "--lr": (float, 1e-4),
    "--warmup": (float, 0.01),
    "--save": (str, None),
    "--save-interval": (int, 5000),
    "--no-save-optim": (FLAG, False),
    "--no-save-rng": (FLAG, False),
    "--load": (str, None),
    "--no-load-optim": (FLAG, False),
    "--no-load-rng": (FLAG, False),
    "--finetune": (FLAG, False),
    "--resume-dataloader": (FLAG, False),
    "--distributed-backend": (str, "nccl"),
    "--local_rank": (int, None),
    "--txt-loss-scale": (float, 1),
    "--fast-load": (FLAG, False),
    # 2.4 validation
    "--eval-batch-size": (int, None),
    "--eval-iters": (int, 100),
    "--eval-interval": (int, 1000),
    # 2.5 Text generation
    "--temperature": (float, 1.0),
    "--top_p": (float, 0.0),
    "--top_k": (int, 0),
    "--generation-task": (str, "text2image"),
    "--input-source": (str, "interactive"),
    "--output-path": (str, "./samples"),
    "--debug": (FLAG, False),
    "--with-id": (FLAG, False),
    "--max-inference-batch-size": (int, 12),
    # 2.6 data
    "--model-parallel-size": (int, 1),
    "--shuffle": (FLAG, False),
    "--train-data": ("nargs+", None),
    "--valid-data": ("nargs*", None),
    "--test-data": ("nargs*", None),
    "--split": (str, "1000,1,1"),
    "--num-workers": (int, 2),
    "--dataset-type": (str, "TokenizedDataset"),
    "--max-memory-length": (int, 2048),
    "--new-dataset-path": (str, None),
    # 2.7 api (--device is changed and tested separately)
    "--img_folder_path": (str, "image/"),
    "--input_folder_path": (str, "input/"),
    "--input_rec_path": (str, "input/"),
    "--check_mode": (str, "code"),
    "--time_interval": (int, 10),
    # 2.8 Sparse Attention
    "--is-sparse": (int, 0),
    "--query-window": (int, 128),
    "--key-window-times": (int, 6),
    "--num-pivot": (int, 768),
    # 2.9 DeepSpeed
    "--deepspeed": (FLAG, False),
    "--deepspeed_config": (str, None),
    "--deepscale": (FLAG, False),
    "--deepscale_config": (str, None),
    "--deepspeed_mpi": (FLAG, False),
}
ADDED_ARGS = {
    "--finetune-positions": (FLAG, False),
    "--bf16": (FLAG, False),
    "--pb-relax-attention": (FLAG, False),
    "--text-tokenizer-path": (str, None),
}
# Values that are valid for options with choices, used by the type test.
CHOICE_VALUES = {
    "--lr-decay-style": "cosine",
    "--generation-task": "raw",
    "--dataset-type": "CompactBinaryDataset",
    "--is-sparse": "2",
}
LAUNCHER_ENV = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NODEID",
]


def dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


@pytest.fixture(autouse=True)
def clean_launcher_env(monkeypatch):
    """No launcher variables from the outside; anything get_args writes to os.environ is undone."""
    for name in LAUNCHER_ENV:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.fixture(scope="module")
def parser_defaults(parser) -> argparse.Namespace:
    return parser.parse_args([])


def expect_error(capsys, argv, *fragments):
    """get_args(argv) exits with a usage error whose one-line message holds every fragment."""
    with pytest.raises(SystemExit) as exc:
        get_args(argv)
    assert exc.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("option", [*ORIGINAL_ARGS, *ADDED_ARGS])
def test_every_argument_has_its_original_default(parser_defaults, option):
    _, default = {**ORIGINAL_ARGS, **ADDED_ARGS}[option]
    value = getattr(parser_defaults, dest(option))
    assert value == default and type(value) is type(default)


@pytest.mark.parametrize("option", [*ORIGINAL_ARGS, *ADDED_ARGS])
def test_every_argument_parses_to_its_type(parser, option):
    kind, _ = {**ORIGINAL_ARGS, **ADDED_ARGS}[option]
    if kind == FLAG:
        assert getattr(parser.parse_args([option]), dest(option)) is True
    elif kind in ("nargs+", "nargs*"):
        assert getattr(parser.parse_args([option, "a", "b"]), dest(option)) == ["a", "b"]
        if kind == "nargs*":
            assert getattr(parser.parse_args([option]), dest(option)) == []
    else:  # the exact value, so a string option that converts (or mangles) its text fails too
        text = CHOICE_VALUES.get(option, "some dir/3.txt" if kind is str else "3")
        value = getattr(parser.parse_args([option, text]), dest(option))
        assert value == kind(text) and type(value) is kind


def test_underscore_names_are_exact(parser):
    args = parser.parse_args(["--top_k", "200", "--top_p", "0.9", "--local_rank", "3", "--cpu_torch_adam"])
    assert (args.top_k, args.top_p, args.local_rank, args.cpu_torch_adam) == (200, 0.9, 3, True)
    for dashed in ("--top-k", "--top-p", "--local-rank", "--cpu-torch-adam"):
        with pytest.raises(SystemExit):
            parser.parse_args([dashed, "1"])


def test_groups_are_in_the_original_order(parser):
    help_text = parser.format_help()
    titles = [
        "model:",
        "fp16:",
        "train:",
        "validation:",
        "Text generation:",
        "data:",
        "api:",
        "Sparse Attention:",
    ]
    positions = [help_text.index(f"\n{title}\n") for title in titles]
    assert positions == sorted(positions)
    assert help_text.index("--deepspeed_config") > positions[-1]


def test_choices_are_the_original_ones(parser):
    assert set(arguments.GENERATION_TASKS) == {
        "text2image",
        "image2text",
        "super-resolution",
        "low-level super-resolution",
        "post-selection",
        "raw",
    }
    assert parser.parse_args(["--generation-task", "low-level super-resolution"]).generation_task == (
        "low-level super-resolution"
    )
    for option, bad in [("--lr-decay-style", "step"), ("--dataset-type", "Lmdb"), ("--is-sparse", "3")]:
        with pytest.raises(SystemExit):
            parser.parse_args([option, bad])


def test_released_text2image_command_line_parses():
    # The common inference block of the released scripts (reference §9.8) with text2image's extras.
    argv = shlex.split(
        "--deepspeed --model-parallel-size 1 --num-layers 48 --hidden-size 2560 "
        "--load pretrained/cogview/cogview-base --num-attention-heads 40 --max-position-embeddings 1089 "
        "--fp16 --temperature 1. --top_k 200 --top_p 0 "
        "--img-tokenizer-path pretrained/vqvae/vqvae_hard_biggerset_011.pt "
        "--query-window 64 --key-window-times 4 --num-pivot 256 --is-sparse 0 "
        "--max-position-embeddings-finetune 1089 --generation-task text2image --input-source ./input.txt "
        "--output-path samples_text2image --batch-size 4 --max-inference-batch-size 4 --device cpu"
    )
    args = get_args(argv)
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.top_k) == (48, 2560, 40, 200)
    assert args.fp16 and args.deepspeed and args.batch_size == 4 and args.device == "cpu"


def test_derived_fields_without_launcher(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = get_args([])
    assert (args.rank, args.world_size, args.local_rank) == (0, 1, None)
    assert args.device == "cpu" and args.cuda is False
    assert args.dynamic_loss_scale is True and args.gradient_accumulation_steps is None
    assert get_args(["--loss-scale", "128"]).dynamic_loss_scale is False


def test_fp32_flags_are_reset_outside_fp16():
    assert get_args(["--fp32-layernorm", "--fp32-embedding"]).fp32_layernorm is False
    kept = get_args(["--fp16", "--fp32-layernorm", "--fp32-embedding"])
    assert kept.fp32_layernorm and kept.fp32_embedding


def test_fp16_and_bf16_are_exclusive(capsys):
    assert get_args(["--bf16"]).bf16 is True
    expect_error(capsys, ["--fp16", "--bf16"], "--bf16", "not allowed with", "--fp16")


@pytest.mark.parametrize(
    ("value", "device"),
    [
        ("cpu", "cpu"),
        ("CPU", "cpu"),
        ("cuda", "cuda"),
        ("cuda:1", "cuda:1"),
        ("0", "cuda:0"),
        ("2", "cuda:2"),
    ],
)
def test_parse_device_normalises(value, device):
    assert parse_device(value) == device
    torch.device(device)  # accepted by torch as is


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "-1", "1.5", ""])
def test_parse_device_rejects(value):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a device"):
        parse_device(value)


def test_device_resolution_with_two_gpus(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert (get_args([]).device, get_args([]).cuda) == ("cuda", True)
    assert get_args(["--device", "1"]).device == "cuda:1"
    assert (get_args(["--device", "cpu"]).device, get_args(["--device", "cpu"]).cuda) == ("cpu", False)
    expect_error(capsys, ["--device", "cuda:2"], "--device cuda:2 does not exist", "2 GPUs")


def test_device_cuda_without_cuda_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_args([]).device == "cpu"
    expect_error(capsys, ["--device", "0"], "--device cuda:0 needs CUDA", "--device cpu")
    expect_error(capsys, ["--device", "tpu"], "argument --device", "'tpu' is not a device")


def test_sparse_training_checks(capsys):
    sparse = ["--is-sparse", "1", "--checkpoint-activations", "--max-position-embeddings", "1089"]
    args = get_args([*sparse, "--train-data", "data/x.bin", "--query-window", "64"])
    assert args.is_sparse == 1  # 1088 = 17 * 64
    expect_error(capsys, sparse, "--is-sparse 1", "needs --train-data")
    expect_error(
        capsys,
        ["--is-sparse", "1", "--train-data", "data/x.bin", "--query-window", "64"],
        "--checkpoint-activations",
    )
    expect_error(
        capsys, [*sparse, "--train-data", "data/x.bin"], "(1088)", "multiple of --query-window (128)"
    )  # 1088 = 8.5 * 128
    assert get_args(["--is-sparse", "2"]).is_sparse == 2  # inference needs none of it


def test_rank_and_world_size_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = get_args(["--model-parallel-size", "2"])
    assert (args.rank, args.world_size, args.local_rank, args.model_parallel_size) == (3, 8, 1, 2)
    assert get_args(["--local_rank", "0"]).local_rank == 0  # the launcher's argument wins over the env


def test_model_parallel_size_is_capped_by_world_size(monkeypatch):
    assert get_args(["--model-parallel-size", "4"]).model_parallel_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert get_args(["--model-parallel-size", "4"]).model_parallel_size == 2


def test_bad_rank_env_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "two")
    expect_error(capsys, [], "WORLD_SIZE='two' is not an integer")


def test_openmpi_and_slurm_ranks(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    args = get_args([])
    assert (args.rank, args.world_size, args.local_rank) == (5, 8, 1)
    monkeypatch.delenv("SLURM_JOB_NUM_NODES")
    monkeypatch.delenv("SLURM_NODEID")
    args = get_args([])
    assert (args.rank, args.world_size, args.local_rank) == (1, 4, 1)


class FakeComm:
    """MPI.COMM_WORLD of rank 2 in a 4-process job on hosts a, a, b, b (this one is the first on b)."""

    hosts = ("a", "a", "b", "b")

    def Get_rank(self):
        return 2

    def Get_size(self):
        return 4

    def bcast(self, value, root):
        assert root == 0 and value is None  # only rank 0 looks up its address
        return "10.0.0.7"

    def allgather(self, value):
        assert value == self.hosts[2]
        return list(self.hosts)


def test_deepspeed_mpi_defines_the_env(monkeypatch):
    mpi = types.SimpleNamespace(COMM_WORLD=FakeComm(), Get_processor_name=lambda: "b")
    package = types.ModuleType("mpi4py")
    package.MPI = mpi
    monkeypatch.setitem(sys.modules, "mpi4py", package)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", mpi)
    args = get_args(["--deepspeed_mpi"])
    assert (args.rank, args.world_size, args.local_rank) == (2, 4, 0)
    env = {name: os.environ[name] for name in LAUNCHER_ENV[:5]}
    assert env == {
        "RANK": "2",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "10.0.0.7",
        "MASTER_PORT": "29500",
    }


def test_deepspeed_mpi_without_mpi4py(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    expect_error(capsys, ["--deepspeed_mpi"], "--deepspeed_mpi needs the mpi4py package")


def write_json(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_deepspeed_config_overrides(tmp_path):
    config = {
        "train_micro_batch_size_per_gpu": 12,
        "gradient_accumulation_steps": 3,
        "optimizer": {"type": "Adam", "params": {"lr": 0.0004, "weight_decay": 0.04}},
    }
    path = write_json(tmp_path / "ds_config.json", config)
    # An explicit --batch-size that differs is refused (tests/test_training.py); --lr is overridden.
    args = get_args(["--deepspeed", "--deepspeed_config", path, "--lr", "1"])
    assert (args.batch_size, args.gradient_accumulation_steps, args.lr, args.weight_decay) == (
        12,
        3,
        0.0004,
        0.04,
    )
    ignored = get_args(
        ["--deepspeed_config", path, "--batch-size", "2"]
    )  # without --deepspeed, as the original
    assert (ignored.batch_size, ignored.lr, ignored.gradient_accumulation_steps) == (2, 1e-4, None)


def test_deepspeed_config_partial(tmp_path):
    path = write_json(tmp_path / "partial.json", {"optimizer": {"type": "Adam"}})
    args = get_args(["--deepspeed", "--deepspeed_config", path, "--batch-size", "2", "--weight-decay", "0.5"])
    assert (args.batch_size, args.gradient_accumulation_steps, args.lr, args.weight_decay) == (
        2,
        None,
        1e-4,
        0.5,
    )


def test_deepspeed_config_errors_name_the_file(tmp_path, capsys):
    missing = str(tmp_path / "missing.json")
    expect_error(capsys, ["--deepspeed", "--deepspeed_config", missing], missing, "does not exist")
    broken = write_json(tmp_path / "broken.json", '{"train_micro_batch_size_per_gpu": 4,\n}')
    expect_error(capsys, ["--deepspeed", "--deepspeed_config", broken], broken, "not valid JSON", "line 2")
    listed = write_json(tmp_path / "list.json", [1, 2])
    expect_error(capsys, ["--deepspeed", "--deepspeed_config", listed], listed, "must hold a JSON object")


def test_deepspeed_arguments_parse_without_importing_deepspeed():
    """--help must be quick and stdout clean: DeepSpeed's import takes seconds and prints a warning there,
    and torchvision's takes as long as torch's."""
    script = (
        "import sys\n"
        "from arguments import build_parser\n"
        "args = build_parser().parse_args(['--deepspeed', '--deepspeed_config', 'c.json', '--deepscale',"
        " '--deepspeed_mpi'])\n"
        "assert (args.deepspeed, args.deepspeed_config, args.deepscale, args.deepspeed_mpi) =="
        " (True, 'c.json', True, True)\n"
        "assert args.deepscale_config is None\n"
        "sys.argv = ['generate_samples.py', '--help']\n"
        "import generate_samples\n"
        "try:\n"
        "    generate_samples.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: generate_samples.py"), done.stdout[:300]
