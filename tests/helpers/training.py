"""Tiny training runs for the tests: a token dataset, the command line of a run, its logged losses."""

import json
from pathlib import Path

import numpy as np

from data_utils import write_lmdb
from data_utils.unified_tokenizer import UnifiedTokenizer
from tools.make_tiny_cogview import TINY_IMAGE_CODES, TINY_SIZES

IMAGE_TOKENS = TINY_IMAGE_CODES  # the tiny_cogview VQ-VAE codebook: trained checkpoints generate with it
SEQUENCE = TINY_SIZES["max_position_embeddings"]


def write_dataset(path: Path, num_image_tokens: int = IMAGE_TOKENS, count: int = 48, seed: int = 0) -> Path:
    """An LMDB of `count` rows `[ROI1] text [BASE] [BOI1] codes [EOI1]`, text of 3..9 random text ids."""
    tokenizer = UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=num_image_tokens)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        text = rng.integers(tokenizer.num_image_tokens, tokenizer.command_start, size=rng.integers(3, 10))
        codes = rng.integers(0, num_image_tokens, size=64)
        row = [
            tokenizer["[ROI1]"],
            *text,
            tokenizer["[BASE]"],
            tokenizer["[BOI1]"],
            *codes,
            tokenizer["[EOI1]"],
        ]
        rows.append(np.asarray(row, dtype=np.int64))
    write_lmdb(path, rows)
    return path


def train_argv(data: Path, *extra: str, num_image_tokens: int = IMAGE_TOKENS) -> list[str]:
    """A CPU run of the tiny model on `data`: one loss line per iteration, no loader workers."""
    sizes = [f"--{key.replace('_', '-')}={value}" for key, value in TINY_SIZES.items()]
    return [
        "--train-data", str(data),
        "--img-tokenizer-num-tokens", str(num_image_tokens),
        *sizes,
        "--device", "cpu",
        "--split", "1",
        "--num-workers", "0",
        "--log-interval", "1",
        "--experiment-name", "run",
        "--warmup", "0.25",
        "--lr-decay-style", "cosine",
        *extra,
    ]  # fmt: skip


def write_ds_config(path: Path, **overrides) -> Path:
    """A fp32 DeepSpeed config (micro-batch 2, Adam lr 1e-3, clipping 1) with `overrides` merged in."""
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "weight_decay": 0.01}},
        **overrides,
    }
    path.write_text(json.dumps(config))
    return path


def logged(log_file: Path, key: str = "train_loss") -> dict[int, float]:
    """`key` by iteration from a run's `--log-file` (the last value when an iteration was logged twice)."""
    values = {}
    for line in log_file.read_text().splitlines():
        entry = json.loads(line)
        if key in entry:
            values[entry["iteration"]] = entry[key]
    return values


def run_folder(save: Path) -> Path:
    """The one experiment folder a run made under `--save` (its name carries a time stamp)."""
    (folder,) = [p for p in save.iterdir() if p.is_dir()]
    return folder
