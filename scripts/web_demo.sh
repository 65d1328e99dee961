#!/usr/bin/env bash
# The web demo: a page and an HTTP JSON API on http://127.0.0.1:7860/ (one model copy, a bounded queue).
# Which models it serves, the first that applies:
#   1. --load DIR (or CHECKPOINT_PATH=DIR) given: that model, with the released architecture unless the
#      arguments say otherwise (--num-layers ...), --img-tokenizer-path (or IMG_TOKENIZER_PATH);
#      --load-caption DIR and --load-sr DIR add image2text/post-selection and super-resolution;
#   2. the released weights in pretrained/cogview/ and pretrained/vqvae/ (cogview-caption and cogview-sr
#      are used when present);
#   3. the bundled demo models: pretrained/demo/web_demo.args lists their arguments, one per line, with
#      paths relative to the repository;
#   otherwise it stops with one line saying what is missing.
# Web options: --host (default 127.0.0.1; another address exposes the demo to the network), --port
# (default 7860; 0 picks a free one), --queue-size, --max-images, --max-prompt-chars, --max-upload-mb,
# --examples FILE (default: the repository's input.txt when there is one, else built-in prompts).
# Environment as the other launchers: DEVICE, PRECISION, PRETRAINED_DIR (default
# pretrained/ in the repository). Ctrl-C stops the server.
user_vqvae="${IMG_TOKENIZER_PATH:-}"
source "$(dirname "${BASH_SOURCE[0]}")/generation_common.sh"
pretrained="${PRETRAINED_DIR:-$repo/pretrained}"
released="$pretrained/cogview"
released_vqvae="${user_vqvae:-$pretrained/vqvae/vqvae_hard_biggerset_011.pt}"
bundled_args="$pretrained/demo/web_demo.args"

explicit=no
for argument in "$@"; do
  case "$argument" in
    --load | --load=*) explicit=yes ;;
    -h | --help) PYTHONPATH="$repo" exec "$python" -m web.server --help ;;
  esac
done
[ -n "${CHECKPOINT_PATH:-}" ] && explicit=yes

examples=()
[ -f "$repo/input.txt" ] && examples=(--examples "$repo/input.txt")  # the shipped example prompts

serve() {
  PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m web.server --temperature 1.0 --top_k 200 \
    --top_p 0 --max-inference-batch-size 4 "${examples[@]}" "${device_args[@]}" "$@"
}

if [ "$explicit" = yes ]; then
  serve "${released_model[@]}" --max-position-embeddings-finetune 1345 --img-tokenizer-path "$released_vqvae" \
    ${CHECKPOINT_PATH:+--load "$CHECKPOINT_PATH"} "$@"
elif [ -f "$released/cogview-base/latest_checkpointed_iteration.txt" ] && [ -f "$released_vqvae" ]; then
  roles=()
  [ -f "$released/cogview-caption/latest_checkpointed_iteration.txt" ] && roles+=(--load-caption "$released/cogview-caption")
  [ -f "$released/cogview-sr/latest_checkpointed_iteration.txt" ] && roles+=(--load-sr "$released/cogview-sr")
  echo "web_demo: serving the released CogView weights from $released" >&2
  serve "${released_model[@]}" --max-position-embeddings-finetune 1345 --img-tokenizer-path "$released_vqvae" \
    --load "$released/cogview-base" "${roles[@]}" "$@"
elif [ -f "$bundled_args" ]; then
  bundled=()
  while IFS= read -r line; do  # a path relative to the repository is made absolute
    case "$line" in '' | '#'*) continue ;; esac
    if [ -e "$repo/$line" ]; then bundled+=("$repo/$line"); else bundled+=("$line"); fi
  done <"$bundled_args"
  echo "web_demo: the released weights are not in $released; serving the bundled demo models" >&2
  serve "${bundled[@]}" "$@"
else
  echo "web_demo: no model to serve: put the released CogView weights in $released/cogview-{base,caption,sr}/" \
    "and $released_vqvae, or the bundled demo models in $pretrained/demo/, or pass --load DIR" \
    "--img-tokenizer-path FILE" >&2
  exit 2
fi
