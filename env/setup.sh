#!/usr/bin/env bash
# Set up a fresh clone: a .venv in the repository with the pinned dependencies, plus the real
# text tokenizer pretrained/chinese_sentencepiece/cog-pretrain.model. Idempotent: a second run
# that has nothing to do returns in a second or two. Quiet on success; one line on failure.
# COGVIEW_VENV puts the environment elsewhere (the Docker image keeps it in /opt/cogview-venv, outside
# the mounted repository); --no-tokenizer installs the dependencies only (the image build).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${COGVIEW_VENV:-$repo/.venv}"
log="$venv/setup.log"

fail() { echo "setup: $*" >&2; exit 1; }

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
  done
fi
[ -n "$python_bin" ] || fail "no python3 found; install Python 3.11"
"$python_bin" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' \
  || fail "$python_bin is $("$python_bin" -V 2>&1); Python 3.11 or newer is required"

[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv" || fail "could not create $venv"

stamp="$venv/.installed"
want="$(cat requirements.txt env/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned dependencies into .venv (first run takes a few minutes)..." >&2
  if ! "$venv/bin/pip" install --disable-pip-version-check -r requirements.txt -c env/constraints.txt >"$log" 2>&1; then
    if grep -qiE "connection|resolve|network|timed out|No matching distribution" "$log"; then
      fail "cannot reach the package registry to install dependencies (details: $log)"
    fi
    fail "pip install failed (details: $log)"
  fi
  echo "$want" >"$stamp"
fi

[ "${1:-}" = --no-tokenizer ] || "$venv/bin/python" "$repo/env/fetch_text_tokenizer.py"
