#!/usr/bin/env bash
# Image → captions with cogview-caption: type an image path at the prompt (stop to end); 8 captions of 20
# tokens each are printed and written, TAB-separated, to samples_image2text/captions.txt.
# Without the released weights it uses the bundled demo model (saying so). Overrides: CHECKPOINT_PATH,
# IMG_TOKENIZER_PATH, PRETRAINED_DIR, DEVICE, arguments (e.g. --input-source FILE).
source "$(dirname "${BASH_SOURCE[0]}")/generation_common.sh"
generate caption 1.0 1089 \
  --generation-task image2text --input-source interactive --output-path samples_image2text \
  --batch-size 8 --debug -- "$@"
