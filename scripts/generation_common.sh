# Sourced by the generation launchers (text2image.sh, super_resolution.sh, ...): the common block of the
# original scripts, made to run anywhere. Environment:
#   CHECKPOINT_PATH     model folder (each launcher's default is a released model in pretrained/cogview/)
#   IMG_TOKENIZER_PATH  VQ-VAE file (default pretrained/vqvae/vqvae_hard_biggerset_011.pt)
#   DEVICE, PRECISION   see common.sh
# Arguments given to the launcher go last, so they override the defaults here (e.g. --batch-size 8,
# --input-source my_queries.txt). Relative paths (input files, output folders) are relative to the
# current directory, as in the original.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
IMG_TOKENIZER_PATH="${IMG_TOKENIZER_PATH:-$repo/pretrained/vqvae/vqvae_hard_biggerset_011.pt}"

# The released models' architecture (all three share it) and the device arguments.
released_model=(
  --model-parallel-size 1 --num-layers 48 --hidden-size 2560 --num-attention-heads 40
  --max-position-embeddings 1089 --query-window 64 --key-window-times 4 --num-pivot 256 --is-sparse 0
)
device_args=(--device "$DEVICE" "${precision[@]}")

# generate CHECKPOINT TEMPERATURE MAXSEQLEN ARGS...: run generate_samples.py with the released model's
# arguments (reference §9.8), then ARGS. A missing checkpoint or VQ-VAE stops it with one line saying
# where the released weights go.
generate() {
  local checkpoint="$1" temperature="$2" max_seq_len="$3"
  shift 3
  exec "$python" "$repo/generate_samples.py" "${released_model[@]}" \
    --max-position-embeddings-finetune "$max_seq_len" \
    --load "$checkpoint" --img-tokenizer-path "$IMG_TOKENIZER_PATH" "${device_args[@]}" \
    --temperature "$temperature" --top_k 200 --top_p 0 \
    "$@"
}
