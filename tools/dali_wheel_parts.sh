#!/usr/bin/env bash
# Bring NVIDIA DALI (the ~199 MB nvidia-dali-cuda130 wheel + its small Python deps) to a GPU machine
# without network, in parts small enough for one device-tool call each (~50 MB; a call carries 64 MiB).
#
#   here:  bash tools/dali_wheel_parts.sh split
#          -> dali_parts/p0 .. dali_parts/pN (git-ignored), each holding one part + the bundle's sha256
#   there: one call per part, in a row (the machine keeps ignored folders only while it stays warm):
#          run(carry=["dali_parts/p0"], command="ls dali_parts/p0")   ... up to the last part, then
#          run(carry=["dali_parts/pN"], command="bash tools/dali_wheel_parts.sh join && STAGES=dali bash tools/device_check.sh")
#          `join` checks that every part is there and the sha256 matches, then pip-installs offline.
#
# Settings (environment): DALI_SPEC (nvidia-dali-cuda130==2.4.0), DALI_PY (3.12: the GPU machine's
# Python), PART_MB (50), DALI_PARTS (dali_parts), PYTHON (python).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DALI_PARTS:-dali_parts}
SPEC=${DALI_SPEC:-nvidia-dali-cuda130==2.4.0}
PYVER=${DALI_PY:-3.12}
PART_MB=${PART_MB:-50}
PY=${PYTHON:-python}
# DALI's own imports; nvimgcodec / nvcomp (image decoding, compression) are dlopened on use and not
# needed by fn.decoders.video, so they stay behind (about 100 MB).
DEPS=("astunparse>=1.6,<=1.6.3" "gast>=0.3.3,<=0.7.0" "six>=1.16,<=1.17" optree nvtx makefun "libcst~=1.8")
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

case "${1:-}" in
split)
  rm -rf "$DIR" && mkdir -p "$DIR/bundle/wheels"
  "$PY" -m pip download "$SPEC" --no-deps --only-binary=:all: --python-version "$PYVER" "${PLATFORMS[@]}" \
    -d "$DIR/bundle/wheels"
  "$PY" -m pip download "${DEPS[@]}" --no-deps --only-binary=:all: --python-version "$PYVER" "${PLATFORMS[@]}" \
    -d "$DIR/bundle/wheels"
  tar cf "$DIR/bundle.tar" -C "$DIR/bundle" wheels && rm -rf "$DIR/bundle"
  sum=$(sha256sum "$DIR/bundle.tar" | cut -d' ' -f1)
  split -b "${PART_MB}M" -d -a 2 "$DIR/bundle.tar" "$DIR/part."
  rm "$DIR/bundle.tar"
  parts=("$DIR"/part.*)
  k=0
  for part in "${parts[@]}"; do
    mkdir -p "$DIR/p$k" && mv "$part" "$DIR/p$k/"
    echo "$sum ${#parts[@]}" > "$DIR/p$k/bundle.sha256"
    k=$((k + 1))
  done
  du -sh "$DIR"/p*
  echo "carry each of ${#parts[@]} folders in its own run call: $(ls -d "$DIR"/p* | tr '\n' ' ')"
  ;;
join)
  read -r sum count < "$(ls "$DIR"/p*/bundle.sha256 | head -n1)"
  have=$(ls "$DIR"/p*/part.* 2>/dev/null | wc -l)
  [ "$have" -eq "$count" ] || { echo "have $have of $count parts in $DIR (a cold machine lost the earlier ones?)" >&2; exit 1; }
  tmp=$(mktemp -d)
  ls "$DIR"/p*/part.* | sort -t. -k2 -n | xargs cat > "$tmp/bundle.tar"
  echo "$sum  $tmp/bundle.tar" | sha256sum -c -
  tar xf "$tmp/bundle.tar" -C "$tmp"
  "$PY" -m pip install --no-index --no-deps "$tmp"/wheels/*.whl
  "$PY" -c "import nvidia.dali as d; print('nvidia.dali', d.__version__)"
  rm -rf "$tmp"
  ;;
*)
  echo "usage: $0 split|join   (see the header of this script)" >&2
  exit 2
  ;;
esac
