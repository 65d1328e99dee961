#!/usr/bin/env bash
# Low-level super-resolution with cogview-sr: type "caption<TAB>image path" at the prompt (stop to end); the
# image is read at 128², and 4 versions at 256² are saved under samples_low_level_sr/{caption}/.
# Without the released weights it uses the bundled demo model (saying so). Overrides: CHECKPOINT_PATH,
# IMG_TOKENIZER_PATH, PRETRAINED_DIR, DEVICE, arguments (e.g. --input-source FILE).
source "$(dirname "${BASH_SOURCE[0]}")/generation_common.sh"
generate super-resolution 1.02 1345 \
  --generation-task "low-level super-resolution" --input-source interactive \
  --output-path samples_low_level_sr --batch-size 4 -- "$@"
