#!/usr/bin/env bash
# Wheels for an offline GPU machine whose image lacks DeepSpeed (the borrowed H200/H100 machines:
# torch, triton, pytest and transformers are there; nothing can be downloaded there).
#   bash tools/device_wheels.sh [--no-av]   # here: fills .whl/ (git-ignored), about 52 MB (17 MB with --no-av)
# then one device call carries it:
#   run(carry=[".whl"], command="bash tools/device_check.sh")
# tools/device_check.sh installs .whl/*.whl into a temporary folder on its PYTHONPATH when .whl/ is there.
# The set: deepspeed (pure Python: built here from its sdist as a py3 wheel, ops compiled on demand
# there), its dependencies the image lacks (hjson, pydantic and pydantic-core), and
# nvidia-cudnn-frontend (the `cudnn` attention backend), and PyAV (the GPU tests that write videos, the
# `data` stage; --no-av leaves it out).
# WHL_PY (default 3.12) is the GPU machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}"
PYVER="${WHL_PY:-3.12}"
DIR=.whl
# Pins: the DeepSpeed release the CPU suite runs (constraints.txt) and pydantic's matching core.
DS_VERSION=$(sed -n 's/^deepspeed==//p' constraints.txt)
PINNED=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 nvidia-cudnn-frontend==1.32.0)
[ "${1:-}" = "--no-av" ] || PINNED+=(av==19.0.2)
PLATFORMS=(--python-version "$PYVER" --implementation cp --only-binary=:all:)
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  PLATFORMS+=(--platform "$p")
done

rm -rf "$DIR" && mkdir -p "$DIR"
"$PY" -m pip download -q --no-deps "${PLATFORMS[@]}" -d "$DIR" "${PINNED[@]}"
# DeepSpeed publishes only an sdist; with DS_BUILD_OPS=0 the wheel is pure Python.
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "deepspeed==${DS_VERSION:?no deepspeed pin in constraints.txt}"

ls -l "$DIR"
echo "total $(du -sh "$DIR" | cut -f1); carry [\"$DIR\"] in the device call that runs tools/device_check.sh"
