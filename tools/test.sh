#!/usr/bin/env bash
# Set up the environment (if needed) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash tools/setup_env.sh | tail -n 1)
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} DS_SKIP_SHM_BUILD=1
exec "$PY" -m pytest -q "$@" tests
