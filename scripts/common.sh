# Sourced by every launcher in scripts/ (through generation_common.sh or pretrain_common.sh): sets the
# project up on first use (env/setup.sh, a no-op once done) and chooses the device and precision.
# Sets: repo, python, DEVICE, PRECISION and precision (the matching flags, an array). Environment:
#   DEVICE     cpu, cuda, cuda:N or a GPU index (default: cuda when a GPU is usable, else cpu)
#   PRECISION  fp16, bf16 or fp32 (default: fp16 on a GPU as the original, fp32 on the CPU,
#              where half precision is very slow)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/env/setup.sh"
python="${COGVIEW_VENV:-$repo/.venv}/bin/python"
if [ -z "${DEVICE:-}" ]; then
  DEVICE="$(PYTHONPATH="$repo" "$python" -m common.default_device)"  # torch is imported only with a GPU driver
fi
if [ "$DEVICE" = cpu ]; then
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"  # DeepSpeed picks the CPU without warning about it
  PRECISION="${PRECISION:-fp32}"
fi
PRECISION="${PRECISION:-fp16}"
case "$PRECISION" in
  fp16) precision=(--fp16) ;;
  bf16) precision=(--bf16) ;;
  fp32) precision=() ;;
  *) echo "PRECISION=$PRECISION is not one of fp16, bf16, fp32" >&2; exit 2 ;;
esac
