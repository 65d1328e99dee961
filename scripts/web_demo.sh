#!/usr/bin/env bash
# The web demo: a page and an HTTP JSON API on http://127.0.0.1:7860/ (one model copy, a bounded queue).
# Which models it serves, the first that applies:
#   1. --load DIR (or CHECKPOINT_PATH=DIR) given: that model, with the released architecture unless the
#      arguments say otherwise (--num-layers ...), --img-tokenizer-path (or IMG_TOKENIZER_PATH);
#      --load-caption DIR and --load-sr DIR add image2text/post-selection and super-resolution, and
#      --caption-model-args="..." / --sr-model-args="..." give one of them its own architecture (model
#      arguments such as --num-layers 4 --hidden-size 128, parsed on top of the others for it only);
#   2. the released weights in pretrained/cogview/ and pretrained/vqvae/ (cogview-caption and cogview-sr
#      are used when present);
#   3. the bundled demo models of pretrained/demo/models.args (text2image, with its caption and
#      super-resolution models when listed; the smaller bundled super-resolution model comes with its own
#      architecture, --sr-model-args);
#   otherwise it stops with one line saying what is missing. The choice is common/model_sources.py's,
#   the same as the other launchers'.
# Web options: --host (default 127.0.0.1; another address exposes the demo to the network), --port
# (default 7860; 0 picks a free one), --queue-size, --max-images, --max-candidates (num_images ×
# post_select), --max-prompt-chars, --max-upload-mb,
# --examples FILE (default: the repository's input.txt when there is one, else built-in prompts).
# Environment as the other launchers: DEVICE, PRECISION, PRETRAINED_DIR (default
# pretrained/ in the repository). Ctrl-C stops the server.
source "$(dirname "${BASH_SOURCE[0]}")/generation_common.sh"
pretrained="${PRETRAINED_DIR:-$repo/pretrained}"

for argument in "$@"; do
  case "$argument" in
    -h | --help) PYTHONPATH="$repo" exec "$python" -m web.server --help ;;
  esac
done

examples=()
[ -f "$repo/input.txt" ] && examples=(--examples "$repo/input.txt")  # the shipped example prompts

chosen="$(PYTHONPATH="$repo" "$python" -m common.model_sources web "$@")" || exit 2
mapfile -t model <<<"$chosen"
if [ "${model[0]}" = missing ]; then
  echo "web_demo: no model to serve: put the released CogView weights in $pretrained/cogview/cogview-{base,caption,sr}/" \
    "and $pretrained/vqvae/vqvae_hard_biggerset_011.pt, or the bundled demo models in $pretrained/demo/, or pass" \
    "--load DIR --img-tokenizer-path FILE" >&2
  exit 2
fi
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m web.server --temperature 1.0 --top_k 200 \
  --top_p 0 --max-inference-batch-size 4 "${examples[@]}" "${device_args[@]}" \
  "${released_model[@]}" --max-position-embeddings-finetune 1345 "${model[@]:1}" "$@"
