#!/usr/bin/env bash
# Pretrain CogView on one machine with the original tutorial's arguments: 12 layers, hidden 1024, 16 heads
# on data/bird_animal.bin (made by preprocess_entry.py), DeepSpeed with scripts/ds_config.json, every GPU
# of this machine; on a machine without a GPU, one CPU process (gloo, fp32). Checkpoints go to
# data/checkpoints/. Overrides: the environment variables of pretrain_common.sh (DATA_PATH, NUM_LAYERS,
# NUM_GPUS_PER_WORKER, ...) and arguments, e.g.
#   DATA_PATH=data/my.bin NUM_LAYERS=2 HIDDEN_SIZE=64 NUM_ATTENTION_HEADS=2 bash scripts/pretrain_single_node.sh --train-iters 100
source "$(dirname "${BASH_SOURCE[0]}")/pretrain_common.sh"
NUM_WORKERS="${NUM_WORKERS:-1}"
HOST_FILE_PATH="${HOST_FILE_PATH:-$repo/hostfile_single}"  # used only if it exists
DS_CONFIG="${DS_CONFIG:-$repo/scripts/ds_config.json}"
DATA_PATH="${DATA_PATH:-$repo/data/bird_animal.bin}"
DATASET_TYPE="${DATASET_TYPE:-CompactBinaryDataset}"
EXPERIMENT_NAME="${EXPERIMENT_NAME:-cogview-bird_animal_tutorial-12-1024-16}"
TRAIN_ITERS="${TRAIN_ITERS:-20000}"
OPTIONS_NCCL="${OPTIONS_NCCL-NCCL_DEBUG=info}"
pretrain --txt-loss-scale 5 -- "$@"
