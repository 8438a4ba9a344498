#!/usr/bin/env bash
# One command for a single-GPU machine: the CUDA-only tests, then the bench suites on the GPU.
#   bash tools/device_check.sh            # results in $OUT/device_check.tgz if OUT is set, else bench_results/
#   STAGES="tests step" bash tools/device_check.sh   # a subset of: tests kernels step data dali (default), cool384
# Needs torch (CUDA) and triton; deepspeed, DALI and flash-attn are optional (tests that need
# them skip; the attention suite times whichever varlen backends exist). Budget: under 8 minutes,
# each stage under its own timeout so one hang cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# Under the device tool ($OUT set, at most 8 files come back) results are made in a temporary folder
# and packed into $OUT/device_check.tgz at the end, beside a copy of summary.txt.
if [ -n "${OUT:-}" ]; then RES=$(mktemp -d); else RES="$ROOT/bench_results"; fi
mkdir -p "$RES"
PY="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONUNBUFFERED=1 DS_SKIP_SHM_BUILD=1
SUMMARY="$RES/summary.txt"
: > "$SUMMARY"
status=0
start=$(date +%s)

note() { echo "[device_check +$(( $(date +%s) - start ))s] $*" | tee -a "$SUMMARY"; }

# Stage runner: name, timeout in seconds, command...; logs to $RES/<name>.log.
stage() {
  local name=$1 limit=$2; shift 2
  note "$name: start (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$RES/$name.log"
  note "$name: rc=$rc"
  [ "$rc" -eq 0 ] || status=1
}

# The kernels install as vjepa_scale.kernels (setup.py package_dir). In an uninstalled checkout,
# expose them through a temporary symlink that is removed on exit.
LINK=""
if ! "$PY" -c "import vjepa_scale.kernels" 2>/dev/null; then
  if [ ! -e vjepa_scale/kernels ]; then
    ln -s ../kernels vjepa_scale/kernels && LINK="$ROOT/vjepa_scale/kernels"
    trap '[ -n "$LINK" ] && rm -f "$LINK"' EXIT
  fi
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  note "no CUDA device visible: nothing to check"
  exit 1
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
for mod in ("triton", "deepspeed", "flash_attn", "transformers", "nvidia.dali"):
    try:
        m = importlib.import_module(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as e:
        print(mod, "unavailable:", type(e).__name__)
EOF
} > "$RES/env.txt" 2>&1
cat "$RES/env.txt"

STAGES=" ${STAGES:-tests kernels step data dali} "
want() { [[ "$STAGES" == *" $1 "* ]]; }

# 1. CUDA-only tests (marked `gpu`) and the Triton kernel cases on real CUDA (marked `triton`);
#    collection errors from optional deps do not stop the rest.
if ! want tests; then :
elif "$PY" -c "import pytest" 2>/dev/null; then
  stage tests_gpu 180 "$PY" -m pytest -q -m "gpu or triton" -p no:cacheprovider --continue-on-collection-errors \
    -rs --junitxml="$RES/tests_gpu.xml" tests
else
  note "tests_gpu: pytest is not installed here; skipped (carry a pytest install to run them)"
  status=1
fi

# 2. Kernel and attention suites (one process), then the training step and the data suite apart,
#    so an out-of-memory or a poisoned CUDA context in one cannot spoil the others' numbers.
#    The step runs ViT-H@384 at B=8 with and without activation checkpointing, each profiled.
want kernels && stage bench_kernels 120 "$PY" tools/bench.py --device cuda --suite gather ema attention --out "$RES/kernels"
if want step; then
  stage bench_step 130 "$PY" tools/bench.py --device cuda --suite step --batch-size 8 --profile --out "$RES/step"
  stage bench_step_nockpt 130 "$PY" tools/bench.py --device cuda --suite step --batch-size 8 --profile \
    --opt model.activation_checkpointing=false --out "$RES/step_nockpt"
fi
want data && stage bench_data 50 "$PY" tools/bench.py --device cuda --suite data --out "$RES/data"
# Opt-in (STAGES="cool384"): V-JEPA 2's ViT-g cooldown step, 384 px x 64 frames (18,432 tokens per clip), 6 clips.
want cool384 && stage bench_step_cool384 240 "$PY" tools/bench.py --device cuda --suite step \
  --config vjepa2_vitg_cool384 --batch-size 6 --steps 4 --profile --out "$RES/step_cool384"

# 3. DALI GPU path (NVDEC): its tests (GPU and CPU mode) and the data suite at full size, whose
#    dali-gpu row says whether any clip fell back to PyAV. DALI is not on the borrowed GPU machines:
#    bring it with tools/dali_wheel_parts.sh (split here, join there) before this stage.
if want dali; then
  if "$PY" -c "import nvidia.dali" 2>/dev/null; then
    stage dali_tests 240 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$RES/dali_tests.xml" \
      tests/test_dali_gpu.py tests/test_dali_cpu.py
    stage bench_data_dali 150 "$PY" tools/bench.py --device cuda --suite data --out "$RES/data_dali"
  else
    note "dali: nvidia.dali does not import here; skipped (bring the wheel: tools/dali_wheel_parts.sh)"
  fi
fi

note "done in $(( $(date +%s) - start ))s, status=$status; results in $RES"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/device_check.tgz" -C "$RES" . && cp "$SUMMARY" "$OUT/summary.txt"
fi
exit $status
