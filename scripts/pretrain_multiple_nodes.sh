#!/usr/bin/env bash
# Pretrain CogView on several nodes with the original tutorial's arguments (12 layers, hidden 1024, 16 heads
# on data/ali_vqvae_hard_biggerset_011.lmdb, DeepSpeed ZeRO-1 with scripts/ds_config_zero.json). Run it on
# node0 of the hostfile that env/setup_connection.py writes (env/start_docker.sh does, from
# env/ip_list.txt); DeepSpeed starts the other nodes over ssh (pdsh, port 2222).
# Without ssh, start it on every node yourself with that node's rank (same hostfile, node0's address):
#   LAUNCHER_ARGS="--no_ssh --node_rank 1 --master_addr 172.30.0.214" bash scripts/pretrain_multiple_nodes.sh
# Overrides: the environment variables of pretrain_common.sh (NUM_WORKERS, NUM_GPUS_PER_WORKER,
# HOST_FILE_PATH, DATA_PATH, ...) and arguments.
source "$(dirname "${BASH_SOURCE[0]}")/pretrain_common.sh"
NUM_WORKERS="${NUM_WORKERS:-2}"
HOST_FILE_PATH="${HOST_FILE_PATH:-$repo/hostfile}"
DS_CONFIG="${DS_CONFIG:-$repo/scripts/ds_config_zero.json}"
DATA_PATH="${DATA_PATH:-$repo/data/ali_vqvae_hard_biggerset_011.lmdb}"
DATASET_TYPE="${DATASET_TYPE:-TokenizedDataset}"
EXPERIMENT_NAME="${EXPERIMENT_NAME:-cogview-ali_fashion_tutorial-12-1024-16}"
TRAIN_ITERS="${TRAIN_ITERS:-40000}"
# InfiniBand; the original's alternative for bonded Ethernet:
#   OPTIONS_NCCL="NCCL_DEBUG=info NCCL_IB_DISABLE=0 NCCL_SOCKET_IFNAME=bond0 NCCL_IB_GID_INDEX=3 NCCL_NET_GDR_LEVEL=0"
OPTIONS_NCCL="${OPTIONS_NCCL-NCCL_DEBUG=info NCCL_IB_DISABLE=0 NCCL_SOCKET_IFNAME=ib0 NCCL_NET_GDR_LEVEL=2}"
pretrain -- "$@"
