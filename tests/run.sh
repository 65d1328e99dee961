#!/usr/bin/env bash
# Run the whole test suite: sets the project up first (a no-op once done), then pytest.
# Extra arguments go to pytest, e.g. `tests/run.sh -k mpu` or `tests/run.sh -m "not slow"`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/env/setup.sh"
cd "$repo"
export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "${COGVIEW_VENV:-$repo/.venv}/bin/python" -m pytest "$@"
