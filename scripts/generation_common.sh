# Sourced by the generation launchers (text2image.sh, super_resolution.sh, ...): the common block of the
# original scripts, made to run anywhere. Which model a launcher uses is decided in one place,
# common/model_sources.py: --load among the arguments or CHECKPOINT_PATH, else the released weights in
# pretrained/cogview/ and pretrained/vqvae/, else the bundled demo models (pretrained/demo/models.args),
# saying in one line which it uses; with none of them it stops with one line saying where the released
# weights go. Environment:
#   CHECKPOINT_PATH     model folder (used with the released model's architecture)
#   IMG_TOKENIZER_PATH  VQ-VAE file (default pretrained/vqvae/vqvae_hard_biggerset_011.pt)
#   PRETRAINED_DIR      where the released and bundled models are looked for (default pretrained/)
#   DEVICE, PRECISION   see common.sh
# Arguments given to the launcher go last, so they override the defaults here (e.g. --batch-size 8,
# --input-source my_queries.txt). Relative paths (input files, output folders) are relative to the
# current directory, as in the original.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The released models' architecture (all three share it) and the device arguments.
released_model=(
  --model-parallel-size 1 --num-layers 48 --hidden-size 2560 --num-attention-heads 40
  --max-position-embeddings 1089 --query-window 64 --key-window-times 4 --num-pivot 256 --is-sparse 0
)
device_args=(--device "$DEVICE" "${precision[@]}")

# generate ROLE TEMPERATURE MAXSEQLEN LAUNCHER_ARGS... -- USER_ARGS...: run generate_samples.py with the
# released model's arguments and the launcher's, then the chosen model's (ROLE: text2image, caption or
# super-resolution; a bundled model brings its own architecture and sampling settings, e.g. a larger
# --max-inference-batch-size than the 4B model's), then the user's, so that the last ones win.
generate() {
  local role="$1" temperature="$2" max_seq_len="$3" chosen
  shift 3
  local launcher=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    launcher+=("$1")
    shift
  done
  shift  # the --
  chosen="$(PYTHONPATH="$repo" "$python" -m common.model_sources "$role" "$@")" || exit 2
  local model=()
  mapfile -t model <<<"$chosen"
  model=("${model[@]:1}")  # after the source: the model's arguments
  exec "$python" "$repo/generate_samples.py" "${released_model[@]}" \
    --max-position-embeddings-finetune "$max_seq_len" "${device_args[@]}" \
    --temperature "$temperature" --top_k 200 --top_p 0 "${launcher[@]}" \
    "${model[@]}" "$@"
}
