#!/usr/bin/env bash
# Post-selection with cogview-caption: each line of input_select.txt is "caption<TAB>image 1<TAB>image 2...";
# line n of samples_post_selection/scores.txt holds the images' scores (higher = better match), in order.
# Without the released weights it uses the bundled demo model (saying so). Overrides: CHECKPOINT_PATH,
# IMG_TOKENIZER_PATH, PRETRAINED_DIR, DEVICE, arguments.
source "$(dirname "${BASH_SOURCE[0]}")/generation_common.sh"
generate caption 1.0 1089 \
  --generation-task post-selection --input-source input_select.txt \
  --output-path samples_post_selection --debug -- "$@"
