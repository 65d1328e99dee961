#!/usr/bin/env bash
# Rebuild the bundled demo models from scratch: data → text and image tokenizers → animal classifier →
# token datasets (LMDB) → bundle. Resumable: after an interruption (Ctrl-C, kill, power loss) rerun the
# same command; finished stages are skipped and the VQ-VAE training and preprocessing continue where they
# stopped. Environment (defaults in brackets; sizes are the bundled models'):
#   DEMO_WORK [data/demo]          data, tokenizers, datasets and logs of the run
#   DEMO_BUNDLE [pretrained/demo]  where the finished tokenizers and classifier are copied
#   DEMO_SOURCE                    folder of animal-mnist's data files [the installed animal-mnist,
#                                  installed on demand from env/demo-requirements.txt]
#   DEMO_TRAIN_COPIES [3] DEMO_TEST_COPIES [1] DEMO_PER_ANIMAL [all]   composites drawn
#   DEMO_IMAGE_SIZE [32] DEMO_VQ_STRIDE [2] DEMO_VQ_CHANNEL [128] DEMO_VQ_EMBED_DIM [32]
#   DEMO_VQ_CODES [512] DEMO_VQ_STEPS [1600] DEMO_VQ_BATCH [64] DEMO_VQ_LR [1e-3]   image tokenizer
#   DEMO_VQ_SAVE_INTERVAL [100]    VQ-VAE steps between saves (how much an interruption can lose)
#   DEMO_CLASSIFIER_EPOCHS [5]
# The DEMO_* settings of a run are kept in $DEMO_WORK/settings.txt; a rerun with other settings stops
# (use another DEMO_WORK), so no stage is ever skipped for an output made with different settings.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="$repo/.venv/bin/python"
work="${DEMO_WORK:-$repo/data/demo}"
bundle="${DEMO_BUNDLE:-$repo/pretrained/demo}"
image_size="${DEMO_IMAGE_SIZE:-32}"
stride="${DEMO_VQ_STRIDE:-2}"
grid=$(( image_size >> (stride / 2) ))  # codes per side: each stride step of 2 halves the image once

stage() { echo "== train_demo: $*" >&2; }

mkdir -p "$work"
settings="$(env | grep -E '^DEMO_' | grep -vE '^DEMO_(WORK|BUNDLE)=' | sort || true)"
if [ -f "$work/settings.txt" ] && [ "$(cat "$work/settings.txt")" != "$settings" ]; then
  echo "train_demo: $work was built with other DEMO_* settings ($work/settings.txt); use another DEMO_WORK" >&2
  exit 2
fi
printf '%s' "$settings" >"$work/settings.txt"

stage "set-up"
"$repo/env/setup.sh"
source_args=()
if [ -n "${DEMO_SOURCE:-}" ]; then
  source_args=(--source "$DEMO_SOURCE")
else
  "$repo/env/install_demo_data.sh"
fi

stage "data → $work/{train,test}"
per_animal=()
[ -n "${DEMO_PER_ANIMAL:-}" ] && per_animal=(--per-animal "$DEMO_PER_ANIMAL")
"$python" tools/build_demo_data.py --output "$work" "${source_args[@]}" "${per_animal[@]}" \
  --train-copies "${DEMO_TRAIN_COPIES:-3}" --test-copies "${DEMO_TEST_COPIES:-1}"

mkdir -p "$work/tokenizers"
text_model="$work/tokenizers/demo_text.model"
stage "text tokenizer → $text_model"
[ -f "$text_model" ] || "$python" tools/train_demo_text_tokenizer.py \
  --captions "$work/train/captions.tsv" --output "$text_model"

vqvae_model="$work/tokenizers/vqvae_demo.pt"
stage "image tokenizer (${image_size} px → ${grid}×${grid} codes) → $vqvae_model"
if [ ! -f "$vqvae_model.done" ]; then  # marks a finished training (the model file is saved along the way)
  resume=()
  [ -f "$vqvae_model.train-state" ] && resume=(--resume)  # continues an interrupted run
  "$python" tools/train_vqvae.py --images "$work/train/images" --output "$vqvae_model" "${resume[@]}" \
    --image-size "$image_size" --stride "$stride" --channel "${DEMO_VQ_CHANNEL:-128}" \
    --embed-dim "${DEMO_VQ_EMBED_DIM:-32}" --n-embed "${DEMO_VQ_CODES:-512}" \
    --batch-size "${DEMO_VQ_BATCH:-64}" --lr "${DEMO_VQ_LR:-1e-3}" --steps "${DEMO_VQ_STEPS:-1600}" \
    --save-interval "${DEMO_VQ_SAVE_INTERVAL:-100}" --workers 0
  touch "$vqvae_model.done"
fi

classifier="$work/tokenizers/animal_classifier.pt"
stage "animal classifier → $classifier"
[ -f "$classifier" ] || "$python" tools/train_demo_classifier.py --train "$work/train/captions.tsv" \
  --test "$work/test/captions.tsv" --output "$classifier" --epochs "${DEMO_CLASSIFIER_EPOCHS:-5}"

stage "tokenizer round trip on the test split"
"$python" tools/eval_demo.py --captions "$work/test/captions.tsv" --classifier "$classifier" \
  --round-trip "$vqvae_model" --image-size "$image_size"

mkdir -p "$work/lmdb"
for split in train test; do
  for layout in text2image image2text; do
    short=$([ "$layout" = text2image ] && echo t2i || echo i2t)  # the loader weights t2i/i2t by name
    lmdb="$work/lmdb/demo_${split}_${short}.lmdb"
    stage "$layout rows of the $split split → $lmdb"
    [ -d "$lmdb" ] || "$python" preprocess_entry.py --captions "$work/$split/captions.tsv" \
      --img-tokenizer-path "$vqvae_model" --txt-tokenizer-path "$text_model" \
      --encode-size "$grid" --layout "$layout" --output "$lmdb" --batch-size 64 --num-workers 0 --device cpu
  done
done

stage "bundle → $bundle"
mkdir -p "$bundle"
for file in "$text_model" "$vqvae_model" "$classifier"; do
  cp "$file" "$bundle/.$(basename "$file").tmp" && mv "$bundle/.$(basename "$file").tmp" "$bundle/$(basename "$file")"
done

if [ ! -f "$repo/pretrain_gpt2.py" ]; then
  stage "stopping after the token datasets: pretrain_gpt2.py (the GPT trainer) is not in this checkout yet"
  exit 0
fi
stage "the GPT stages are not wired in yet; train on $work/lmdb/demo_train_{t2i,i2t}.lmdb with pretrain_gpt2.py"
