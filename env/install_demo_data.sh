#!/usr/bin/env bash
# Install the demo's data source (animal-mnist, pinned in env/demo-requirements.txt) into .venv, without
# its dependencies. Run by scripts/train_demo.sh; a no-op when it is already there. One line on failure.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/env/setup.sh"
pin="$(grep -E '^animal-mnist==' "$repo/env/demo-requirements.txt")"
if [ "$("$repo/.venv/bin/pip" show animal-mnist 2>/dev/null | sed -n 's/^Version: //p')" = "${pin#*==}" ]; then
  exit 0
fi
log="$repo/.venv/demo-setup.log"
if ! "$repo/.venv/bin/pip" install --disable-pip-version-check --no-deps -r "$repo/env/demo-requirements.txt" >"$log" 2>&1; then
  echo "install_demo_data: could not install $pin (details: $log)" >&2
  exit 1
fi
