#!/usr/bin/env bash
# Rebuild the bundled demo models from scratch: data → text and image tokenizers → animal classifier →
# token datasets (LMDB) → the GPT (text2image and caption layouts in one model) → bundle → the caption
# GPT (that GPT finetuned on caption rows of fresh composites; bundle) → the super-resolution GPT (its
# datasets, that GPT finetuned on them, bundle). Resumable: after an interruption (Ctrl-C, kill,
# power loss) rerun the same command; finished stages are skipped and the VQ-VAE training, preprocessing
# and every GPT training continue where they stopped (a GPT from its last checkpoint). Environment
# (defaults in brackets; sizes are the bundled models'):
#   DEMO_WORK [data/demo]          data, tokenizers, datasets and logs of the run
#   DEMO_BUNDLE [pretrained/demo]  where the finished tokenizers and classifier are copied
#   DEMO_SOURCE                    folder of animal-mnist's data files [the installed animal-mnist,
#                                  installed on demand from env/demo-requirements.txt]
#   DEMO_TRAIN_COPIES [3] DEMO_TEST_COPIES [1] DEMO_PER_ANIMAL [all]   composites drawn
#   DEMO_IMAGE_SIZE [32] DEMO_VQ_STRIDE [2] DEMO_VQ_CHANNEL [128] DEMO_VQ_EMBED_DIM [32]
#   DEMO_VQ_CODES [512] DEMO_VQ_STEPS [1600] DEMO_VQ_BATCH [64] DEMO_VQ_LR [1e-3]   image tokenizer
#   DEMO_VQ_SAVE_INTERVAL [100]    VQ-VAE steps between saves (how much an interruption can lose)
#   DEMO_CLASSIFIER_EPOCHS [5]
#   DEMO_GPT_LAYERS [6] DEMO_GPT_HIDDEN [192] DEMO_GPT_HEADS [6] DEMO_GPT_BATCH [16]
#   DEMO_GPT_ITERS [22000] DEMO_GPT_LR [1e-3] DEMO_GPT_SAVE_INTERVAL [250]   the GPT and its training
#   DEMO_GPT_CAPTION_DROPOUT [0.1]  text2image rows shown without their caption (for --guidance-scale)
#   DEMO_GPT_TXT_LOSS_SCALE [5]     weight of text positions (--txt-loss-scale): a caption's animal word is
#                                  1 of ~264 predictions in its row, too little signal to learn shapes from
#   DEMO_SAMPLING [--top_k 30 --guidance-scale 2 --post-select 16 --max-inference-batch-size 128]
#                                  the bundle's text2image defaults (128: all 16 candidates of an image in one
#                                  forward, and of 8 images at --batch-size 8; the small model's caches fit)
#   DEMO_GPT_PRECISION [auto]      bf16 (autocast) or fp32; auto: bf16 where the CPU has AVX512-BF16 or
#                                  AMX (1.6× faster there), fp32 elsewhere (bf16 is far slower on AVX2)
#   DEMO_GPT_EVAL_INTERVAL [1000] DEMO_GPT_EVAL_ITERS [10]   loss on the test split's token datasets
#   DEMO_CAPTION_COPIES [6]        fresh composites per train silhouette for the caption GPT (another seed)
#   DEMO_CAPTION_ITERS [12000] DEMO_CAPTION_LR [5e-4] DEMO_CAPTION_TXT_LOSS_SCALE [20]
#   DEMO_CAPTION_DROPOUT [0.1]     the caption GPT's finetuning (batch DEMO_GPT_BATCH, hidden dropout)
#   DEMO_CAPTION_SAVE_INTERVAL [250] DEMO_CAPTION_EVAL_INTERVAL [1000] DEMO_CAPTION_EVAL_ITERS [20]
#   DEMO_SR_TRAIN_EVERY [9] DEMO_SR_TEST_EVERY [5]   the super-resolution datasets take every Nth composite
#                                  of the split (each gives 9 windows × 2 captions rows)
#   DEMO_SR_BATCH [16] DEMO_SR_ITERS [3000] DEMO_SR_LR [1e-3] DEMO_SR_SAVE_INTERVAL [250]
#                                  the super-resolution GPT: the GPT finetuned (its architecture and precision)
#   DEMO_SR_INPUT_NOISE [0.2]      hi-res codes shown to it wrong (--sr-input-noise), so it reads the crop
#   DEMO_SR_EVAL_INTERVAL [250] DEMO_SR_EVAL_ITERS [5]   its loss on the test split's SR dataset
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
# newest_run SAVE NAME: the newest run folder under SAVE of the experiment NAME that has a checkpoint (its
# tracker file), or nothing. pretrain_gpt2.py saves to {--save}/{--experiment-name}{timestamp}, so a rerun
# continues that run.
newest_run() {
  local tracker
  tracker="$(ls -d "$1/$2"*/latest_checkpointed_iteration.txt 2>/dev/null | sort | tail -n 1 || true)"
  echo "${tracker%/latest_checkpointed_iteration.txt}"
}

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
vq_steps="${DEMO_VQ_STEPS:-1600}"
# A run killed after its last save but before it was marked done is finished: its state is at the last step.
if [ ! -f "$vqvae_model.done" ] && [ -f "$vqvae_model.train-state" ] && "$python" -c 'import sys, torch
sys.exit(torch.load(sys.argv[1], map_location="cpu", weights_only=True)["step"] < int(sys.argv[2]))' \
  "$vqvae_model.train-state" "$vq_steps" 2>/dev/null; then
  touch "$vqvae_model.done"
fi
if [ ! -f "$vqvae_model.done" ]; then  # marks a finished training (the model file is saved along the way)
  resume=()
  [ -f "$vqvae_model.train-state" ] && resume=(--resume)  # continues an interrupted run
  "$python" tools/train_vqvae.py --images "$work/train/images" --output "$vqvae_model" "${resume[@]}" \
    --image-size "$image_size" --stride "$stride" --channel "${DEMO_VQ_CHANNEL:-128}" \
    --embed-dim "${DEMO_VQ_EMBED_DIM:-32}" --n-embed "${DEMO_VQ_CODES:-512}" \
    --batch-size "${DEMO_VQ_BATCH:-64}" --lr "${DEMO_VQ_LR:-1e-3}" --steps "$vq_steps" \
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
    caption_end=()  # the caption model learns to end its captions (image2text cuts them there)
    [ "$layout" = image2text ] && caption_end=(--caption-end)
    [ -d "$lmdb" ] || "$python" preprocess_entry.py --captions "$work/$split/captions.tsv" \
      --img-tokenizer-path "$vqvae_model" --txt-tokenizer-path "$text_model" "${caption_end[@]}" \
      --encode-size "$grid" --layout "$layout" --output "$lmdb" --batch-size 64 --num-workers 0 --device cpu
  done
done

# One GPT learns both layouts: text2image rows (weight 4, by the "t2i" in their name) and caption rows
# (weight 2, "i2t"). Sequences: 1 + caption + 2 + grid² + 1 tokens (267 for 16×16 codes); 24 positions
# more leave room for image2text's 20 generated caption positions.
gpt_layers="${DEMO_GPT_LAYERS:-6}"
gpt_hidden="${DEMO_GPT_HIDDEN:-192}"
gpt_heads="${DEMO_GPT_HEADS:-6}"
gpt_positions=$(( grid * grid + 24 ))
gpt_architecture=(--num-layers "$gpt_layers" --hidden-size "$gpt_hidden" --num-attention-heads "$gpt_heads"
  --max-position-embeddings "$gpt_positions")
gpt_iters="${DEMO_GPT_ITERS:-22000}"
gpt_precision="${DEMO_GPT_PRECISION:-auto}"
if [ "$gpt_precision" = auto ]; then
  gpt_precision=$("$python" -c 'from common.devices import cpu_has_fast_bf16; print("bf16" if cpu_has_fast_bf16() else "fp32")')
fi
case "$gpt_precision" in
  bf16) precision=(--bf16) ;;
  fp32) precision=() ;;
  *) echo "train_demo: DEMO_GPT_PRECISION is '$gpt_precision'; use auto, bf16 or fp32" >&2; exit 2 ;;
esac
gpt_save="$work/gpt"
gpt_run="$(newest_run "$gpt_save" demo_gpt)"
resume=()
[ -n "$gpt_run" ] && resume=(--load "$gpt_run")
stage "GPT (${gpt_layers} layers × ${gpt_hidden}, ${gpt_iters} iterations, $gpt_precision) → $gpt_save ${resume[*]}"
if [ -z "$gpt_run" ] || [ "$(cat "$gpt_run/latest_checkpointed_iteration.txt")" != "$gpt_iters" ]; then
  "$python" pretrain_gpt2.py "${gpt_architecture[@]}" "${resume[@]}" --device cpu "${precision[@]}" \
    --train-data "$work/lmdb/demo_train_t2i.lmdb" "$work/lmdb/demo_train_i2t.lmdb" --split 1000,0,0 \
    --valid-data "$work/lmdb/demo_test_t2i.lmdb" "$work/lmdb/demo_test_i2t.lmdb" \
    --img-tokenizer-path "$vqvae_model" --text-tokenizer-path "$text_model" \
    --batch-size "${DEMO_GPT_BATCH:-16}" --train-iters "$gpt_iters" --lr "${DEMO_GPT_LR:-1e-3}" \
    --lr-decay-style cosine --lr-decay-ratio 0.1 --warmup 0.02 --hidden-dropout 0 --attention-dropout 0 \
    --caption-dropout "${DEMO_GPT_CAPTION_DROPOUT:-0.1}" --txt-loss-scale "${DEMO_GPT_TXT_LOSS_SCALE:-5}" \
    --save "$gpt_save" --experiment-name demo_gpt --save-interval "${DEMO_GPT_SAVE_INTERVAL:-250}" \
    --eval-interval "${DEMO_GPT_EVAL_INTERVAL:-1000}" --eval-iters "${DEMO_GPT_EVAL_ITERS:-10}" \
    --log-interval 10 --num-workers 1
  gpt_run="$(newest_run "$gpt_save" demo_gpt)"
fi

stage "bundle → $bundle"
mkdir -p "$bundle"
for file in "$text_model" "$vqvae_model" "$classifier"; do
  cp "$file" "$bundle/.$(basename "$file").tmp" && mv "$bundle/.$(basename "$file").tmp" "$bundle/$(basename "$file")"
done
"$python" tools/bundle_demo_model.py "$gpt_run" --bundle "$bundle" "${gpt_architecture[@]}" --image-size "$image_size" \
  --sampling "${DEMO_SAMPLING:---top_k 30 --guidance-scale 2 --post-select 16 --max-inference-batch-size 128}"

# The caption GPT: the GPT above finetuned (--finetune: its weights, iteration 0, a fresh optimizer) on
# caption rows only, of the split's own composites and of DEMO_CAPTION_COPIES fresh ones per silhouette
# (new placements and colours), with the text positions weighted up. One GPT for both layouts named the
# right animal in about half of its captions. It takes the caption role (image2text, post-selection)
# and joins the GPT as text2image's second scorer (the sum of both picked right candidates more often).
caption_work="$work/caption"
stage "caption composites → $caption_work/train"  # seed 7: placements and colours other than the split's
"$python" tools/build_demo_data.py --output "$caption_work" "${source_args[@]}" "${per_animal[@]}" \
  --splits train --train-copies "${DEMO_CAPTION_COPIES:-6}" --seed 7
caption_lmdb="$work/lmdb/demo_caption_train_i2t.lmdb"
stage "image2text rows of the caption composites → $caption_lmdb"
[ -d "$caption_lmdb" ] || "$python" preprocess_entry.py --captions "$caption_work/train/captions.tsv" \
  --img-tokenizer-path "$vqvae_model" --txt-tokenizer-path "$text_model" --caption-end \
  --encode-size "$grid" --layout image2text --output "$caption_lmdb" --batch-size 64 --num-workers 0 --device cpu
caption_iters="${DEMO_CAPTION_ITERS:-12000}"
caption_save="$caption_work/gpt"
caption_run="$(newest_run "$caption_save" "")"  # a run that loads a model is saved under that model's name
start=(--load "$gpt_run" --finetune)
[ -n "$caption_run" ] && start=(--load "$caption_run")
stage "caption GPT (${caption_iters} iterations from $gpt_run, $gpt_precision) → $caption_save ${start[*]}"
if [ -z "$caption_run" ] || [ "$(cat "$caption_run/latest_checkpointed_iteration.txt")" != "$caption_iters" ]; then
  "$python" pretrain_gpt2.py "${gpt_architecture[@]}" "${start[@]}" --device cpu "${precision[@]}" \
    --train-data "$caption_lmdb" "$work/lmdb/demo_train_i2t.lmdb" --split 1000,0,0 \
    --valid-data "$work/lmdb/demo_test_i2t.lmdb" \
    --img-tokenizer-path "$vqvae_model" --text-tokenizer-path "$text_model" \
    --batch-size "${DEMO_GPT_BATCH:-16}" --train-iters "$caption_iters" --lr "${DEMO_CAPTION_LR:-5e-4}" \
    --lr-decay-style cosine --lr-decay-ratio 0.1 --warmup 0.02 --attention-dropout 0 \
    --hidden-dropout "${DEMO_CAPTION_DROPOUT:-0.1}" --txt-loss-scale "${DEMO_CAPTION_TXT_LOSS_SCALE:-20}" \
    --save "$caption_save" --save-interval "${DEMO_CAPTION_SAVE_INTERVAL:-250}" \
    --eval-interval "${DEMO_CAPTION_EVAL_INTERVAL:-1000}" --eval-iters "${DEMO_CAPTION_EVAL_ITERS:-20}" \
    --log-interval 10 --num-workers 1
  caption_run="$(newest_run "$caption_save" "")"
fi

stage "bundle the caption GPT → $bundle"
"$python" tools/bundle_demo_model.py "$caption_run" --bundle "$bundle" --model caption "${gpt_architecture[@]}" \
  --image-size "$image_size"


# The super-resolution GPT: the GPT above finetuned (--finetune) on rows `[ROI1] caption [size] [BOI1] crop
# [EOI1] [ROI2] [POS0] [size] [BOI2] block` (data_utils.layouts), a (grid/2)² crop of the grid×grid codes of
# the composite at image_size px and the grid² block of its codes at twice that size (the same VQ-VAE reads
# both), 9 windows per composite. Two things make it super-resolve: starting from the GPT, which knows what
# the codes draw (trained from scratch, 4 layers × 128, a model learnt the colours but drew no animals), and
# input noise (--sr-input-noise, training.input_noise): on clean rows it learnt to continue each code's
# neighbours and, drawing alone, never began the crop's foreground. Positions restart at [ROI2]
# (--finetune-positions: the reset of --finetune, also on a resume), so the GPT's table covers the tokens
# from [ROI2] on; the sequence holds 3 + caption + crop + 5 + block tokens, with room for captions of 16
# pieces.
sr_sequence=$(( grid * grid + grid * grid / 4 + 8 + 16 ))
for split in train test; do
  every=$([ "$split" = train ] && echo "${DEMO_SR_TRAIN_EVERY:-9}" || echo "${DEMO_SR_TEST_EVERY:-5}")
  captions="$work/sr/${split}_captions.tsv"
  lmdb="$work/lmdb/demo_${split}_sr.lmdb"
  stage "super-resolution rows of the $split composites numbered a multiple of $every → $lmdb"
  mkdir -p "$work/sr"
  awk -F'\t' -v every="$every" '{ n = $1; gsub(/[^0-9]/, "", n); if ((n + 0) % every == 0) print }' \
    "$work/$split/captions.tsv" >"$captions.tmp"
  mv "$captions.tmp" "$captions"
  [ -d "$lmdb" ] || "$python" preprocess_entry.py --captions "$captions" --image-root "$work/$split" \
    --img-tokenizer-path "$vqvae_model" --txt-tokenizer-path "$text_model" --layout super-resolution \
    --encode-size "$grid" --max-seq-len "$sr_sequence" --output "$lmdb" --batch-size 64 --num-workers 0 \
    --device cpu
done

sr_architecture=("${gpt_architecture[@]}" --max-position-embeddings-finetune "$sr_sequence")
sr_iters="${DEMO_SR_ITERS:-3000}"
sr_save="$work/sr/gpt"
sr_run="$(newest_run "$sr_save" "")"  # a run that loads a model is saved under that model's name
start=(--load "$gpt_run" --finetune)
[ -n "$sr_run" ] && start=(--load "$sr_run")
stage "super-resolution GPT (${sr_iters} iterations from $gpt_run, $gpt_precision) → $sr_save ${start[*]}"
if [ -z "$sr_run" ] || [ "$(cat "$sr_run/latest_checkpointed_iteration.txt")" != "$sr_iters" ]; then
  "$python" pretrain_gpt2.py "${sr_architecture[@]}" --finetune-positions "${start[@]}" --device cpu \
    "${precision[@]}" --train-data "$work/lmdb/demo_train_sr.lmdb" --split 1000,0,0 \
    --valid-data "$work/lmdb/demo_test_sr.lmdb" \
    --img-tokenizer-path "$vqvae_model" --text-tokenizer-path "$text_model" \
    --batch-size "${DEMO_SR_BATCH:-16}" --train-iters "$sr_iters" --lr "${DEMO_SR_LR:-1e-3}" \
    --lr-decay-style cosine --lr-decay-ratio 0.1 --warmup 0.02 --hidden-dropout 0 --attention-dropout 0 \
    --sr-input-noise "${DEMO_SR_INPUT_NOISE:-0.2}" --save "$sr_save" --save-interval "${DEMO_SR_SAVE_INTERVAL:-250}" \
    --eval-interval "${DEMO_SR_EVAL_INTERVAL:-250}" --eval-iters "${DEMO_SR_EVAL_ITERS:-5}" \
    --log-interval 10 --num-workers 1
  sr_run="$(newest_run "$sr_save" "")"
fi

stage "bundle the super-resolution GPT → $bundle"
"$python" tools/bundle_demo_model.py "$sr_run" --bundle "$bundle" --model super-resolution \
  "${sr_architecture[@]}" --image-size "$image_size"
