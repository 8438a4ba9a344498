#!/usr/bin/env bash
# Create ./.venv with torch and the package installed editable (idempotent, ~2 min when new).
# Torch comes from pip's configured sources (no index is set here): a CPU build where those offer one;
# plain PyPI serves Linux the CUDA build (several GB), so set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel
# index first for the small one (README "Quickstart").
# Usage: bash tools/setup_env.sh   (VENV=path to place it elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# A venv whose python or pip does not run (an interrupted creation, a venv made without pip, a moved or
# upgraded base python) is rebuilt from scratch; --clear also drops the stamp below, so everything reinstalls.
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  python3 -m venv --clear "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.vjepa_setup_$(cat setup.py constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$PY" -m pip install -q --upgrade pip
  # Torch first, at the version constraints.txt pins (from pip's configured sources: see the top).
  "$PY" -m pip install -q -c constraints.txt torch
  "$PY" -m pip install -q -c constraints.txt -e ".[dev]"
  touch "$stamp"
fi
echo "$PY"
