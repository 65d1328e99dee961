#!/usr/bin/env bash
# Text → images with cogview-base: one caption per line of ./input.txt, 4 images each, saved under
# samples_text2image/{caption}/ (0.jpg ... 3.jpg, concat.jpg). Add --debug for one grid per caption, or
# --with-id for "id<TAB>caption" lines.
# Without the released weights it uses the bundled demo model (saying so). Overrides: CHECKPOINT_PATH,
# IMG_TOKENIZER_PATH, PRETRAINED_DIR, DEVICE, arguments.
# The tutorial checkpoint of the original: CHECKPOINT_PATH=data/checkpoints/cogview-bird_animal_tutorial-12-1024-1608-10-09-38
# with --num-layers 12 --hidden-size 1024 --num-attention-heads 16.
source "$(dirname "${BASH_SOURCE[0]}")/generation_common.sh"
generate text2image 1.0 1089 \
  --generation-task text2image --input-source ./input.txt --output-path samples_text2image \
  --batch-size 4 --max-inference-batch-size 4 -- "$@"
