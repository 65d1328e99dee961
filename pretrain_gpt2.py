"""Pretrain or finetune CogView, on DeepSpeed (`--deepspeed --deepspeed_config scripts/ds_config.json`)
or plain torch + DDP, from one CPU process to many GPU nodes.

    python pretrain_gpt2.py --train-data data/my_t2i.lmdb --img-tokenizer-num-tokens 8192 \\
        --num-layers 12 --hidden-size 1024 --num-attention-heads 16 --max-position-embeddings 1089 \\
        --save checkpoints --train-iters 20000 --lr-decay-style cosine --warmup .1 \\
        --deepspeed --deepspeed_config scripts/ds_config.json

The original's module-level functions keep their names, signatures and return values; importing this
file does nothing else. The logic lives in the `training` package.
"""

import sys

from common.malloc import keep_freed_memory
from training.batch import get_batch, get_masks_and_position_ids
from training.checkpointing import load_checkpoint, save_checkpoint
from training.engine import (
    get_learning_rate_scheduler,
    get_model,
    get_param_groups,
    setup_model_and_optimizer,
)
from training.loop import evaluate_and_print_results, train
from training.run import main
from training.step import evaluate, forward_step, train_step

__all__ = [
    "evaluate",
    "evaluate_and_print_results",
    "forward_step",
    "get_batch",
    "get_learning_rate_scheduler",
    "get_masks_and_position_ids",
    "get_model",
    "get_param_groups",
    "load_checkpoint",
    "main",
    "save_checkpoint",
    "setup_model_and_optimizer",
    "train",
    "train_step",
]

if __name__ == "__main__":
    keep_freed_memory()  # a training process frees and reallocates large tensors every step
    sys.exit(main())
