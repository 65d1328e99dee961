#!/usr/bin/env bash
# Super-resolution with cogview-sr: type "caption<TAB>image path" at the prompt (stop to end); each query
# gives one 512² image drawn in 9 windows (slow), saved with the 256² input as a debug grid under samples_sr/.
# Without the released weights it uses the bundled demo model (saying so). Overrides: CHECKPOINT_PATH,
# IMG_TOKENIZER_PATH, PRETRAINED_DIR, DEVICE, arguments (e.g. --input-source FILE).
source "$(dirname "${BASH_SOURCE[0]}")/generation_common.sh"
generate super-resolution 1.02 1345 \
  --generation-task super-resolution --input-source interactive --output-path samples_sr --debug -- "$@"
