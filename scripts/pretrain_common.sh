# Sourced by pretrain_single_node.sh and pretrain_multiple_nodes.sh: the original's training arguments,
# made to run anywhere. Environment (each launcher sets its own defaults first):
#   DATA_PATH            --train-data (the tutorial's data/bird_animal.bin or data/ali_...lmdb)
#   DATASET_TYPE         --dataset-type (CompactBinaryDataset for .bin, TokenizedDataset for LMDB)
#   NUM_LAYERS, HIDDEN_SIZE, NUM_ATTENTION_HEADS   model size (the tutorial's 12, 1024, 16)
#   MP_SIZE              --model-parallel-size (1)
#   NUM_WORKERS          number of nodes
#   NUM_GPUS_PER_WORKER  processes per node: every GPU by default; on a machine without one, 1 CPU process
#   HOST_FILE_PATH       DeepSpeed hostfile, "nodeX slots=N" lines (env/setup_connection.py writes it)
#   DS_CONFIG            DeepSpeed JSON configuration
#   SAVE_DIR             --save (data/checkpoints)
#   EXPERIMENT_NAME      --experiment-name
#   TRAIN_ITERS          --train-iters
#   MASTER_PORT          rendezvous port (default: a random one, so that two runs on a machine coexist)
#   OPTIONS_NCCL         NCCL variables for the GPU processes (see each launcher)
#   LAUNCHER_ARGS        more arguments for DeepSpeed's launcher, e.g. "--no_ssh --node_rank 1
#                        --master_addr ADDR" to start each node's processes without ssh
#   DEVICE, PRECISION    see common.sh (on the CPU: gloo and fp32; on a GPU the DeepSpeed config's fp16
#                        or bf16 section has the last word)
# Arguments given to the launcher go last, so they override the defaults here (the original put them
# first, where the defaults overrode them).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MP_SIZE="${MP_SIZE:-1}"
NUM_LAYERS="${NUM_LAYERS:-12}"
HIDDEN_SIZE="${HIDDEN_SIZE:-1024}"
NUM_ATTENTION_HEADS="${NUM_ATTENTION_HEADS:-16}"
SAVE_DIR="${SAVE_DIR:-$repo/data/checkpoints}"
MASTER_PORT="${MASTER_PORT:-$(shuf -n 1 -i 10000-65535)}"

# pretrain EXTRA_ARGS... -- USER_ARGS...: launch pretrain_gpt2.py through DeepSpeed's launcher on
# NUM_WORKERS nodes with the arguments shared by both tutorials, then EXTRA_ARGS (the launcher's own),
# then USER_ARGS. On the CPU: the gloo backend, fp32, and 1 process per node unless told otherwise.
pretrain() {
  local extra=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do extra+=("$1"); shift; done
  [ "$#" -gt 0 ] && shift
  local hostfile=() launcher_args=()
  read -r -a launcher_args <<<"${LAUNCHER_ARGS:-}"
  if [ "$NUM_WORKERS" -gt 1 ]; then
    if [ ! -f "$HOST_FILE_PATH" ]; then
      echo "pretrain: hostfile $HOST_FILE_PATH not found: list the nodes in env/ip_list.txt and run env/start_docker.sh on each (or env/setup_connection.py)" >&2
      exit 2
    fi
    hostfile=(--hostfile "$HOST_FILE_PATH")
  elif [ -f "$HOST_FILE_PATH" ]; then
    hostfile=(--hostfile "$HOST_FILE_PATH")
  fi
  local backend=nccl device_args=() nccl=()
  if [ "$DEVICE" = cpu ]; then
    backend=gloo
    device_args=(--device cpu)
    NUM_GPUS_PER_WORKER="${NUM_GPUS_PER_WORKER:-1}"
    local threads=$(( $(nproc) / NUM_GPUS_PER_WORKER ))
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( threads > 0 ? threads : 1 ))}"
    local processes="$NUM_GPUS_PER_WORKER process"
    [ "$NUM_GPUS_PER_WORKER" -eq 1 ] || processes+="es"
    echo "pretrain: no GPU here: training on the CPU (gloo, $processes per node, $PRECISION)" >&2
  else
    NUM_GPUS_PER_WORKER="${NUM_GPUS_PER_WORKER:-$("$python" -c 'import torch; print(torch.cuda.device_count())')}"
    read -r -a nccl <<<"${OPTIONS_NCCL:-}"
  fi
  # The original's data are tokenised with the released VQ-VAE (8192 codes); a run that names its own
  # image tokenizer takes the codebook size from it instead.
  local image_codes=(--img-tokenizer-num-tokens 8192) argument
  for argument in "$@"; do
    [[ "$argument" == --img-tokenizer-path* ]] && image_codes=()
  done
  local command=(
    env "${nccl[@]}" "$python" -m deepspeed.launcher.runner
    --num_nodes "$NUM_WORKERS" --num_gpus "$NUM_GPUS_PER_WORKER" "${hostfile[@]}" --master_port "$MASTER_PORT"
    "${launcher_args[@]}" "$repo/pretrain_gpt2.py"
    --experiment-name "$EXPERIMENT_NAME" "${image_codes[@]}" --dataset-type "$DATASET_TYPE"
    --model-parallel-size "$MP_SIZE" --num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN_SIZE"
    --num-attention-heads "$NUM_ATTENTION_HEADS" --save "$SAVE_DIR" --train-iters "$TRAIN_ITERS"
    --resume-dataloader --train-data "$DATA_PATH" --split 949,50,1 --distributed-backend "$backend"
    --lr-decay-style cosine --warmup .1 --checkpoint-activations --deepspeed-activation-checkpointing
    --max-position-embeddings 1089 --max-memory-length 0 "${precision[@]}" "${device_args[@]}"
    "${extra[@]}" --deepspeed --deepspeed_config "$DS_CONFIG" "$@"
  )
  echo "${command[*]}" >&2
  exec "${command[@]}"
}
