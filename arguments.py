"""CogView's command line: every argument of the original plus a few marked additions.

`get_args()` is shared by generation, training and the tools. Names, types and defaults follow the
original exactly, underscores included (`--top_k`, `--top_p`, `--local_rank`, `--cpu_torch_adam`).
Arguments that the original ignored are kept, and say so in their help, so that old command lines still
parse. Additions and changes say "(added)" or "(changed)" in their help.
"""

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from common.devices import DeviceError, check_device_exists, parse_device
from common.process_env import LauncherEnvError, discover_process_env
from data_utils.datasets import DATASET_TYPES
from generation.tasks import TASKS
from learning_rates import DECAY_STYLES

GENERATION_TASKS = list(TASKS)


def get_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default: `sys.argv[1:]`) and derive the runtime fields (rank, device, DS overrides).

    Bad combinations exit through `parser.error` with one sentence naming the argument, file or variable.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.batch_size_given = _given(sys.argv[1:] if argv is None else argv, "--batch-size")
    _check_sparse(parser, args)
    _check_quality_levers(parser, args)
    _resolve_device(parser, args)
    _resolve_distributed(parser, args)
    _resolve_precision(args)
    _apply_deepspeed_config(parser, args)
    return args


def _given(argv: Sequence[str], flag: str) -> bool:
    """Whether `flag` appears on the command line (as `flag VALUE` or `flag=VALUE`)."""
    return any(item == flag or item.startswith(flag + "=") for item in argv)


def build_parser() -> argparse.ArgumentParser:
    """The parser with the groups in the original order, then DeepSpeed's configuration arguments."""
    parser = argparse.ArgumentParser(
        description="PyTorch CogView Model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        usage="%(prog)s [options]  (see --help)",  # the full usage would bury one-line errors
    )
    _add_model_args(parser)
    _add_fp16_args(parser)
    _add_training_args(parser)
    _add_validation_args(parser)
    _add_text_generation_args(parser)
    _add_data_args(parser)
    _add_api_args(parser)
    _add_sparse_args(parser)
    _add_deepspeed_args(parser)
    return parser


def model_argument_names() -> frozenset[str]:
    """The attributes the "model configuration" options set: what may differ between two loaded models.

    The web demo gives each extra model these on top of the main arguments; the tokenizer, the image size
    and the sampling settings stay shared.
    """
    parser = argparse.ArgumentParser(add_help=False)
    _add_model_args(parser)
    return frozenset(vars(parser.parse_args([])))


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model", "model configuration")
    group.add_argument(
        "--attention-dropout", type=float, default=0.1, help="dropout on attention probabilities"
    )
    group.add_argument("--num-attention-heads", type=int, default=16, help="attention heads (CogView-4B: 40)")
    group.add_argument("--hidden-size", type=int, default=1024, help="hidden size (CogView-4B: 2560)")
    group.add_argument("--num-layers", type=int, default=24, help="transformer layers (CogView-4B: 48)")
    group.add_argument(
        "--layernorm-epsilon",
        type=float,
        default=1e-5,
        help="unused, as in the original (the model uses 1e-5)",
    )
    group.add_argument(
        "--hidden-dropout", type=float, default=0.1, help="dropout on embeddings and residual-branch outputs"
    )
    group.add_argument(
        "--max-position-embeddings",
        type=int,
        default=512,
        help="rows of the position table, also the training sequence length (released models: 1089)",
    )
    group.add_argument(
        "--vocab-size", type=int, default=30522, help="overwritten at runtime by the padded tokenizer size"
    )
    group.add_argument("--deep-init", action="store_true", help="unused, as in the original")
    group.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="pad the vocabulary to a multiple of this times the model-parallel size",
    )
    group.add_argument(
        "--cpu-optimizer", action="store_true", help="non-DeepSpeed training: run Adam on the CPU"
    )
    group.add_argument(
        "--cpu_torch_adam",
        action="store_true",
        help="with --cpu-optimizer: use torch.optim.AdamW instead of DeepSpeedCPUAdam",
    )
    group.add_argument(
        "--max-position-embeddings-finetune",
        type=int,
        default=-1,
        help="longer sequence length for finetuning (super-resolution: 1345); -1 = off",
    )
    group.add_argument(
        "--pb-relax-attention",
        action="store_true",
        help="(added) PB-relax attention of the paper (alpha = 32); off by default, as the original never "
        "implemented it and the released weights were trained without it",
    )


def _add_fp16_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fp16", "fp16 configurations")
    dtype = group.add_mutually_exclusive_group()
    dtype.add_argument("--fp16", action="store_true", help="run the model in half precision")
    dtype.add_argument(
        "--bf16",
        action="store_true",
        help="(added) run the model in bfloat16; cannot be combined with --fp16",
    )
    group.add_argument("--fp32-embedding", action="store_true", help="unused, as in the original")
    group.add_argument("--fp32-layernorm", action="store_true", help="unused, as in the original")
    group.add_argument("--fp32-tokentypes", action="store_true", help="unused, as in the original")
    group.add_argument(
        "--fp32-allreduce", action="store_true", help="all-reduce in fp32 (legacy non-torch-DDP path only)"
    )
    group.add_argument(
        "--hysteresis", type=int, default=2, help="delayed shift of the dynamic loss scaler (non-DeepSpeed)"
    )
    group.add_argument(
        "--loss-scale", type=float, default=None, help="static loss scale; None = dynamic loss scaling"
    )
    group.add_argument(
        "--loss-scale-window", type=float, default=1000, help="dynamic loss scaler window (non-DeepSpeed)"
    )
    group.add_argument("--min-scale", type=float, default=1, help="dynamic loss scaler floor (non-DeepSpeed)")


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("train", "training configurations")
    group.add_argument(
        "--experiment-name",
        type=str,
        default="CogView",
        help="save-folder name; training appends %%m-%%d-%%H-%%M, or uses basename(--load) when loading",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="training: micro batch per GPU (a DeepSpeed config overrides it); inference: samples per query",
    )
    group.add_argument(
        "--weight-decay", type=float, default=0.01, help="weight decay (a DeepSpeed config overrides it)"
    )
    group.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="activation checkpointing (needed by --is-sparse 1)",
    )
    group.add_argument("--checkpoint-num-layers", type=int, default=1, help="layers per checkpointed chunk")
    group.add_argument(
        "--deepspeed-activation-checkpointing",
        action="store_true",
        help="use DeepSpeed's activation checkpointing and RNG tracker",
    )
    group.add_argument("--clip-grad", type=float, default=1.0, help="gradient clipping (non-DeepSpeed path)")
    group.add_argument("--train-iters", type=int, default=1000000, help="total training iterations")
    group.add_argument("--log-interval", type=int, default=50, help="iterations between log lines")
    group.add_argument(
        "--log-file",
        type=str,
        default=None,
        help="(added) append each logged iteration's values (exact losses, lr, tokens/s) as a JSON line here",
    )
    group.add_argument("--exit-interval", type=int, default=None, help="exit after this many iterations")
    group.add_argument(
        "--summary-dir",
        type=str,
        default="",
        help="tensorboard base directory ({dir}/runs/{experiment-name})",
    )
    group.add_argument("--seed", type=int, default=1234, help="random seed (python, numpy and torch)")
    group.add_argument(
        "--img-tokenizer-path", type=str, default=None, help="VQ-VAE checkpoint (vqvae_hard_biggerset_011.pt)"
    )
    group.add_argument(
        "--img-tokenizer-num-tokens",
        type=int,
        default=None,
        help="without --img-tokenizer-path: a stand-in image tokenizer with this many codes (training: 8192)",
    )
    group.add_argument(
        "--text-tokenizer-path",
        type=str,
        default=None,
        help="(added) any SentencePiece model for the text; default: the bundled cog-pretrain.model",
    )
    group.add_argument("--reset-position-ids", action="store_true", help="unused, as in the original")
    group.add_argument("--reset-attention-mask", action="store_true", help="unused, as in the original")
    group.add_argument(
        "--lr-decay-iters", type=int, default=None, help="iterations of the lr schedule; None = --train-iters"
    )
    group.add_argument(
        "--lr-decay-style",
        type=str,
        default="linear",
        choices=DECAY_STYLES,
        help="lr decay after warmup (exponential was never implemented and behaves as constant)",
    )
    group.add_argument(
        "--lr-decay-ratio", type=float, default=0.1, help="cosine decay floor as a fraction of --lr"
    )
    group.add_argument(
        "--lr", type=float, default=1.0e-4, help="peak learning rate (a DeepSpeed config overrides it)"
    )
    group.add_argument(
        "--warmup", type=float, default=0.01, help="warmup length as a fraction of the lr-schedule iterations"
    )
    group.add_argument(
        "--save", type=str, default=None, help="checkpoint root; saves to {save}/{experiment-name}"
    )
    group.add_argument("--save-interval", type=int, default=5000, help="iterations between checkpoints")
    group.add_argument("--no-save-optim", action="store_true", help="do not save the optimizer state")
    group.add_argument("--no-save-rng", action="store_true", help="do not save the RNG state")
    group.add_argument(
        "--load", type=str, default=None, help="checkpoint folder (holding latest_checkpointed_iteration.txt)"
    )
    group.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="(added) allow checkpoints holding arbitrary pickled objects; only for files you trust",
    )
    group.add_argument("--no-load-optim", action="store_true", help="do not load the optimizer state")
    group.add_argument("--no-load-rng", action="store_true", help="do not load the RNG state")
    group.add_argument(
        "--finetune",
        action="store_true",
        help="restart at iteration 0 without optimizer or RNG state; resets the [ROI2] positions",
    )
    group.add_argument(
        "--finetune-positions",
        action="store_true",
        help="(added) the [ROI2] position reset and longer sequence of --finetune without its restart "
        "at iteration 0: trains a super-resolution model from scratch, resumable from its checkpoints",
    )
    group.add_argument("--resume-dataloader", action="store_true", help="skip the samples already consumed")
    group.add_argument("--distributed-backend", type=str, default="nccl", help="torch.distributed backend")
    group.add_argument(
        "--local_rank", type=int, default=None, help="set by the launcher (else env LOCAL_RANK)"
    )
    group.add_argument("--txt-loss-scale", type=float, default=1, help="loss weight of text positions")
    group.add_argument(
        "--caption-dropout",
        type=_probability,
        default=0.0,
        help="(added) fraction of text2image training rows shown without their caption, so that "
        "--guidance-scale has an unconditional model; 0 = off (the original)",
    )
    group.add_argument(
        "--sr-input-noise",
        type=_probability,
        default=0.0,
        help="(added) in super-resolution training rows, the fraction of hi-res codes after [BOI2] "
        "replaced, as model input only, by a code from elsewhere in the block, so that the model learns "
        "to read the low-res crop rather than continue its neighbours; 0 = off (the original)",
    )
    group.add_argument(
        "--fast-load", action="store_true", help="load checkpoints without taking the shared file lock"
    )


def _add_validation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("validation", "validation configurations")
    group.add_argument("--eval-batch-size", type=int, default=None, help="None = --batch-size")
    group.add_argument("--eval-iters", type=int, default=100, help="iterations per evaluation")
    group.add_argument("--eval-interval", type=int, default=1000, help="iterations between evaluations")


def _add_text_generation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Text generation", "configurations")
    group.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="logits are divided by it; must be > 0 (0 is refused, not greedy: --top_k 1 is greedy decoding)",
    )
    group.add_argument(
        "--top_p", type=float, default=0.0, help="nucleus sampling threshold in [0, 1]; 0 = off"
    )
    group.add_argument(
        "--top_k", type=int, default=0, help="keep the k most likely tokens; 0 = off, 1 = greedy"
    )
    group.add_argument(
        "--generation-task",
        type=str,
        default="text2image",
        choices=GENERATION_TASKS,
        help="what to generate; (changed) raw, which the original left unimplemented, completes text "
        "and part of an image",
    )
    group.add_argument(
        "--input-source", type=str, default="interactive", help="'interactive' or a file of queries"
    )
    group.add_argument("--output-path", type=str, default="./samples", help="output folder")
    group.add_argument("--debug", action="store_true", help="also save one grid of all samples per query")
    group.add_argument(
        "--with-id", action="store_true", help="queries are 'id<TAB>...'; outputs go to {output-path}/{id}/"
    )
    group.add_argument(
        "--max-inference-batch-size", type=int, default=12, help="the most samples in one forward pass"
    )
    group.add_argument(
        "--offload",
        action="store_true",
        help="(added) keep the transformer layers in CPU memory and move each to the GPU only while it "
        "runs: for GPUs smaller than the model, at the cost of moving all weights every step",
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="(added) image side in pixels; the VQ-VAE's code grid follows from it (256 → 32×32 for the "
        "released model)",
    )
    group.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="(added) text2image classifier-free guidance: logits = uncond + S·(cond − uncond), uncond "
        "being the query without its caption; needs a model trained with --caption-dropout; 1 = off",
    )
    group.add_argument(
        "--post-select",
        type=_positive_int,
        default=1,
        help="(added) text2image: draw K candidates per image and keep the one the caption model scores "
        "best (post-selection); 1 = off",
    )
    group.add_argument(
        "--post-select-load",
        nargs="+",
        default=None,
        metavar="DIR",
        help="(added) the caption model(s) scoring --post-select candidates (e.g. cogview-caption), same "
        "architecture as --load, loaded only with K > 1 (the --load folder itself is not loaded twice); "
        "with several, a candidate's score is the sum of theirs (the product of their caption "
        "probabilities); default: the --load model itself (one model trained on both layouts)",
    )


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data", "data configurations")
    group.add_argument(
        "--model-parallel-size", type=int, default=1, help="model-parallel size (clipped to the world size)"
    )
    group.add_argument("--shuffle", action="store_true", help="unused, as in the original")
    group.add_argument("--train-data", nargs="+", default=None, help="LMDB folders or .bin files")
    group.add_argument(
        "--valid-data", nargs="*", default=None, help="validation data (zeroes the validation split)"
    )
    group.add_argument("--test-data", nargs="*", default=None, help="test data (zeroes the test split)")
    group.add_argument(
        "--split", type=str, default="1000,1,1", help="train,valid,test proportions (',' or '/' separated)"
    )
    group.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    group.add_argument(
        "--dataset-type",
        type=str,
        default="TokenizedDataset",
        choices=list(DATASET_TYPES),
        help="training data format",
    )
    group.add_argument(
        "--max-memory-length",
        type=int,
        default=2048,
        help="cap on the cached memory length; keep 2048 for inference, training must pass 0",
    )
    group.add_argument(
        "--new-dataset-path", type=str, default=None, help="folder polled for new *lmdb / *bin datasets"
    )


def _add_api_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("api", "api configurations")
    group.add_argument("--img_folder_path", type=str, default="image/", help="unused, as in the original")
    group.add_argument("--input_folder_path", type=str, default="input/", help="unused, as in the original")
    group.add_argument("--input_rec_path", type=str, default="input/", help="unused, as in the original")
    group.add_argument("--check_mode", type=str, default="code", help="unused, as in the original")
    group.add_argument("--time_interval", type=int, default=10, help="unused, as in the original")
    group.add_argument(
        "--device",
        type=parse_device,
        default=None,
        help="(changed) inference device: cpu, cuda, cuda:N or a GPU index N as in the original; "
        "default cuda if available, else cpu",
    )


def _add_sparse_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Sparse Attention", "sparse configurations")
    group.add_argument(
        "--is-sparse",
        type=int,
        default=0,
        choices=[0, 1, 2],
        help="0 = dense, 1 = sparse training, 2 = sparse inference (unoptimised; use 0 for inference)",
    )
    group.add_argument("--query-window", type=int, default=128, help="query window of sparse attention")
    group.add_argument("--key-window-times", type=int, default=6, help="key window in query windows")
    group.add_argument("--num-pivot", type=int, default=768, help="pivot tokens of sparse attention")


# The DeepSpeed arguments of DeepSpeed 0.4, which the original relied on. They are defined here rather than by
# `deepspeed.add_config_arguments`, which defines the same first four: importing DeepSpeed takes seconds and
# prints an accelerator warning on stdout, too much for parsing a command line or printing --help.
_DEEPSPEED_ARGS: dict[str, dict] = {
    "--deepspeed": {"action": "store_true", "help": "enable DeepSpeed"},
    "--deepspeed_config": {"type": str, "default": None, "help": "DeepSpeed JSON configuration file"},
    "--deepscale": {"action": "store_true", "help": "deprecated alias of --deepspeed"},
    "--deepscale_config": {"type": str, "default": None, "help": "deprecated alias of --deepspeed_config"},
    "--deepspeed_mpi": {"action": "store_true", "help": "discover ranks and the master address through MPI"},
}


def _add_deepspeed_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DeepSpeed (compatibility)", "DeepSpeed arguments of the original")
    for flag, options in _DEEPSPEED_ARGS.items():
        group.add_argument(flag, **options)


def _resolve_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Default the device to CUDA when available and reject a CUDA device this machine lacks.

    `args.cuda` follows the chosen device (the original used torch.cuda.is_available()), so that
    `--device cpu` on a GPU machine keeps everything on the CPU.
    """
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        check_device_exists(args.device, option="--device")
    except DeviceError as error:
        parser.error(str(error))
    device = torch.device(args.device)
    args.cuda = device.type == "cuda"


def _check_sparse(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Sparse training needs training data, activation checkpointing and windows that tile the sequence."""
    if args.is_sparse != 1:
        return
    if not args.train_data:
        parser.error("--is-sparse 1 (sparse training) needs --train-data; use --is-sparse 0 for inference")
    if not args.checkpoint_activations:
        parser.error("--is-sparse 1 (sparse training) needs --checkpoint-activations")
    if (args.max_position_embeddings - 1) % args.query_window != 0:
        parser.error(
            f"--is-sparse 1 needs --max-position-embeddings minus 1 ({args.max_position_embeddings - 1}) "
            f"to be a multiple of --query-window ({args.query_window})"
        )


def _check_quality_levers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--guidance-scale and --post-select are text2image options."""
    if args.generation_task == "text2image":
        return
    for flag, value, off in (
        ("--guidance-scale", args.guidance_scale, 1.0),
        ("--post-select", args.post_select, 1),
    ):
        if value != off:
            parser.error(f"{flag} applies to --generation-task text2image only")


def _resolve_distributed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.rank``, ``world_size`` and ``local_rank`` (the original's derived fields) from the launcher.

    The discovery itself is ``common.process_env``; model parallelism is capped by the world size.
    """
    try:
        env = discover_process_env(args.local_rank, use_mpi=args.deepspeed_mpi)
    except LauncherEnvError as error:
        parser.error(str(error))
    args.rank, args.world_size, args.local_rank = env.rank, env.world_size, env.local_rank
    args.model_parallel_size = min(args.model_parallel_size, args.world_size)


def _resolve_precision(args: argparse.Namespace) -> None:
    """Loss-scale mode, and the original's reset of the (unused) fp32 flags outside fp16."""
    args.dynamic_loss_scale = args.loss_scale is None
    if not args.fp16:
        args.fp32_embedding = args.fp32_layernorm = args.fp32_tokentypes = False


def _apply_deepspeed_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """With `--deepspeed --deepspeed_config F`, the JSON's batch, accumulation, lr and weight decay win.

    `args.gradient_accumulation_steps` is always set (None without a config entry); the original left it
    undefined outside DeepSpeed runs.
    """
    args.gradient_accumulation_steps = None
    if not (args.deepspeed and args.deepspeed_config):
        return
    path = args.deepspeed_config
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except FileNotFoundError:
        parser.error(f"DeepSpeed config file {path} does not exist")
    except (OSError, UnicodeDecodeError) as error:
        parser.error(f"DeepSpeed config file {path} cannot be read: {error}")
    except json.JSONDecodeError as error:
        parser.error(f"DeepSpeed config file {path} is not valid JSON: {error.msg} at line {error.lineno}")
    if not isinstance(config, dict):
        parser.error(f"DeepSpeed config file {path} must hold a JSON object")
    micro_batch = config.get("train_micro_batch_size_per_gpu", args.batch_size)
    if args.batch_size_given and micro_batch != args.batch_size:
        parser.error(
            f"--batch-size {args.batch_size} contradicts train_micro_batch_size_per_gpu {micro_batch} in "
            f"DeepSpeed config {path}; change one of them (the config's value is used when --batch-size is "
            "not given)"
        )
    args.batch_size = micro_batch
    args.gradient_accumulation_steps = config.get("gradient_accumulation_steps")
    params = config.get("optimizer", {}).get("params", {})
    args.lr = params.get("lr", args.lr)
    args.weight_decay = params.get("weight_decay", args.weight_decay)
