#!/usr/bin/env bash
# One command for a single-GPU machine: the bench suites on the GPU, then the CUDA-only tests.
#   bash tools/device_check.sh            # results in $OUT/device_check.tgz if OUT is set, else bench_results/
#   STAGES="tests step" bash tools/device_check.sh   # a subset of: tests kernels step zero1 ckpt compile data dali cool384
# Default stages: step zero1 kernels tests, in that order, within BUDGET_S (520 s, setup included):
# the bench stages have limits (attention preflight 45 s, step 180 s, zero1 100 s, kernels 75 s), each cut
# to what is left of the budget (a stage with under 30 s left is skipped), the tests take the time left
# (skipped under 45 s). Results reach $OUT after each stage. zero1 is the engine row under ZeRO-1,
# docs/SCALING.md's recommended stage for ViT-H, which decides the recipes' default stage. Before the step
# stages, `attention_preflight` runs the backend `auto` picks (cuDNN where its frontend is carried) forward
# and backward at the step's shape against `padded` (ATTENTION=name: that backend instead of auto's); if it
# fails, every step stage runs the fallback: torch_varlen on CUDA (the backend the H100 runs measured), padded
# on a CPU or when the backend that failed was torch_varlen itself. A failed engine or torch row whose error
# names attention is retried in `bench_step_fallback` on the fallback. STEP_OPTS adds bench options to the
# step and compile stages (e.g. STEP_OPTS="--opt zero.stage=2"). Opt-in (a second call):
# `ckpt` (the engine row with every block recomputed), `compile` (the engine row with
# model.compile=true), `data`, `dali` (DALI tests + data suite, once the wheel was brought with
# tools/dali_wheel_parts.sh) and `cool384` (V-JEPA 2's ViT-g cooldown step).
# The step stage times ViT-H/16@384 (the vith384 recipe, B=10, activation checkpointing `auto`: the fewest
# recomputed blocks the memory estimate fits on this card) in three rows on the same batches:
# the engine row (the Trainer's 1-rank DeepSpeed engines, as tools/train.py runs it), the
# single-device torch row (fp32 weights + bf16 autocast) and the reference-style row, and profiles
# the engine row. Needs torch (CUDA), triton and deepspeed; DALI and flash-attn are optional (tests
# that need them skip; the attention suite times whichever varlen backends exist). Each stage runs
# under its own timeout so one hang cannot eat the others' time. device_check.{json,md} gather every
# row of every stage at the end.
# Offline machine without DeepSpeed: `bash tools/device_wheels.sh` here fills .whl/; carry it, and the
# wheels there (or in $WHEELS) are installed into a temporary folder on PYTHONPATH first.
# DEVICE=cpu is a dry run of the same stages on the CPU (each suite's small CPU sizes), so that the
# script and its commands are checked where no GPU is (tests/integration/test_device_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# Under the device tool ($OUT set, at most 8 files come back) results are made in a temporary folder
# and packed into $OUT/device_check.tgz at the end, beside a copy of summary.txt.
if [ -n "${OUT:-}" ]; then RES=$(mktemp -d); else RES="$ROOT/bench_results"; fi
mkdir -p "$RES"
# The interpreter: $PYTHON, else the first of python3, python that imports torch.
PY="${PYTHON:-}"
for c in python3 python; do
  [ -z "$PY" ] && command -v "$c" > /dev/null && "$c" -c "import torch" 2>/dev/null && PY=$(command -v "$c")
done
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1 DS_SKIP_SHM_BUILD=1
SUMMARY="$RES/summary.txt"
: > "$SUMMARY"
status=0
start=$(date +%s)
# The default run's budget in seconds, setup included: the device tool's 9 minutes, less the final gather.
BUDGET_S=${BUDGET_S:-520}

note() { echo "[device_check +$(( $(date +%s) - start ))s] $*" | tee -a "$SUMMARY"; }

# Every finished stage's files reach $OUT at once (device_check.tgz replaced whole), so a call cut off
# at the device tool's limit still returns the stages that ran.
publish() {
  [ -n "${OUT:-}" ] || return 0
  tar czf "$OUT/.device_check.tgz" -C "$RES" . && mv "$OUT/.device_check.tgz" "$OUT/device_check.tgz"
  cp "$SUMMARY" "$OUT/summary.txt"
  for f in device_check.json device_check.md; do [ -f "$RES/$f" ] && cp "$RES/$f" "$OUT/$f"; done
  return 0
}

# Stage runner: name, timeout in seconds, command...; logs to $RES/<name>.log. The limit is cut to what is
# left of BUDGET_S (less 30 s for the gather); under 30 s left, the stage is skipped (status 1).
stage() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - start) - 30 ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 30 ]; then
    note "$name: skipped, ${left}s left of BUDGET_S=${BUDGET_S}s (run it with STAGES=...)"; status=1; return 0
  fi
  note "$name: start (limit ${limit}s)"
  timeout -s "${STAGE_SIGNAL:-TERM}" -k 10 "$limit" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$RES/$name.log"
  note "$name: rc=$rc"
  [ "$rc" -eq 0 ] || status=1
  publish
}

# The package is imported from this checkout, installed or not: `python tools/bench.py` has tools/, not
# the checkout, on its sys.path. The kernels are vjepa_scale/kernels (a tracked symlink to kernels/; in
# a copy that lost it, a temporary one is made and removed on exit).
LINK="" SITE=""
cleanup() {
  [ -n "$LINK" ] && rm -f "$LINK"; [ -n "$SITE" ] && rm -rf "$SITE"; [ -n "${OUT:-}" ] && rm -rf "$RES"; true
}
trap cleanup EXIT
if [ ! -e vjepa_scale/kernels ]; then
  ln -s ../kernels vjepa_scale/kernels && LINK="$ROOT/vjepa_scale/kernels"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=$(mktemp -d)
  if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
      "$WHEELS"/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"  # bin: the deepspeed launcher
    note "installed the carried wheels: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
  else
    note "installing the carried wheels from $WHEELS failed"; status=1
  fi
fi

DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    note "no CUDA device visible: nothing to check (DEVICE=cpu: a dry run on the CPU)"
    exit 1
  fi
elif [ "$DEVICE" != cpu ]; then
  note "DEVICE must be cuda or cpu, got '$DEVICE'"; exit 2
fi

{
  [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  timeout 60 "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
for mod in ("triton", "deepspeed", "cudnn", "flash_attn", "transformers", "av", "nvidia.dali"):
    try:
        m = importlib.import_module(mod)
        print(mod, getattr(m, "__version__", "?"))
    except Exception as e:
        print(mod, "unavailable:", type(e).__name__)
try:
    import cudnn
    print("cudnn backend", cudnn.backend_version_string())
except Exception as e:
    print("cudnn backend unavailable:", type(e).__name__)
EOF
} > "$RES/env.txt" 2>&1
cat "$RES/env.txt"

STAGES=" ${STAGES:-tests kernels step zero1} "
want() { [[ "$STAGES" == *" $1 "* ]]; }

# Stages in the order of what their numbers decide, so a cut-off call loses the least.
# 0. The attention backend `auto` picks (cuDNN where carried: never run on a GPU before it is timed), once
#    forward and backward at the step's shape; if it fails, the step stages run on $fallback instead.
#    ATTENTION (default auto) names the backend the step stages use.
#    (STEP_OPTS may name another for the step and compile stages; the preflight does not check that one.)
ATTENTION=${ATTENTION:-auto}
fallback=$([ "$DEVICE" = cuda ] && echo torch_varlen || echo padded)
ATTN_OPTS=$([ "$ATTENTION" = auto ] || echo "--opt model.attention_backend=$ATTENTION")
if want step || want zero1 || want ckpt || want compile || want cool384; then
  rm -f "$RES/attention_preflight.log"  # a bench_results/ of an earlier run must not decide
  stage attention_preflight 45 "$PY" -c 'import sys
from vjepa_scale.bench.attention import backend_preflight
name, error = backend_preflight(sys.argv[1], sys.argv[2])
print("attention preflight: %s: %s" % (name, error or "ok"))
sys.exit(1 if error else 0)' "$DEVICE" "$ATTENTION"
  # no log: skipped for lack of budget (the stages keep their backend); a log without "ok": failed, hung or crashed
  if [ -f "$RES/attention_preflight.log" ] && ! grep -q "^attention preflight: .*: ok$" "$RES/attention_preflight.log"; then
    tested=$(sed -n 's/^attention preflight: \([a-z_]*\): .*/\1/p' "$RES/attention_preflight.log" | tail -n 1)
    [ "${tested:-$ATTENTION}" = "$fallback" ] && fallback=padded  # the fallback itself failed: padded runs anywhere
    ATTN_OPTS="--opt model.attention_backend=$fallback"
    note "attention: the step stages run $fallback (the preflight of ${tested:-$ATTENTION} failed)"
  fi
fi
# 1. The step: engine, torch and reference-style rows of the recipe (B=10, checkpointing `auto`), the
#    engine row profiled; then the engine row under ZeRO-1. Each bench call is its own process, so an
#    out-of-memory or a poisoned CUDA context in one cannot spoil the others' numbers.
want step && rm -f "$RES/step/bench_$DEVICE.json" && stage bench_step 180 "$PY" tools/bench.py --device $DEVICE \
  --suite step --profile ${STEP_OPTS:-} $ATTN_OPTS --out "$RES/step"
# An engine or torch row that failed on its attention (the backend `auto` picked, which the reference-style row
# does not use) is retried on the fallback backend, so the run still has an engine row; other failures are not.
engine_failed() {  # the step JSON $1 has a FAILED engine or torch row whose error names attention
  "$PY" -c 'import json, re, sys
rows = json.load(open(sys.argv[1]))["rows"]
sys.exit(0 if any(r.get("case") == "FAILED" and r.get("row") in ("engine", "torch")
                  and re.search("cudnn|attention|varlen|sdpa", r.get("error", ""), re.I) for r in rows) else 1)' \
    "$1" 2>/dev/null
}
FALLBACK_OPTS="--opt model.attention_backend=$fallback"
if want step && [ "$ATTN_OPTS" != "$FALLBACK_OPTS" ] && engine_failed "$RES/step/bench_$DEVICE.json"; then
  ATTN_OPTS=$FALLBACK_OPTS
  stage bench_step_fallback 120 "$PY" tools/bench.py --device $DEVICE --suite step --step-rows engine torch \
    ${STEP_OPTS:-} $ATTN_OPTS --out "$RES/step_fallback"
fi
want zero1 && stage bench_step_zero1 100 "$PY" tools/bench.py --device $DEVICE --suite step \
  --step-rows engine --steps 4 --opt zero.stage=1 $ATTN_OPTS --out "$RES/step_zero1"
# 2. Kernel and attention suites (one process).
want kernels && stage bench_kernels 75 "$PY" tools/bench.py --device $DEVICE --suite gather ema attention --out "$RES/kernels"
# 3. CUDA-only tests (marked `gpu`) and the Triton kernel cases on real CUDA (marked `triton`);
#    collection errors from optional deps do not stop the rest.
if ! want tests; then :
elif "$PY" -c "import pytest" 2>/dev/null; then
  # The time left of the run's budget (less the kill margin and the final gather); SIGINT at the limit,
  # so pytest still writes its summary and the XML of the tests that ran; with pytest-timeout, no one
  # test takes over 120 s. Under 45 s left (every stage before ran to its limit): skipped, say so.
  left=$(( BUDGET_S - ($(date +%s) - start) - 20 ))
  per_test=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo --timeout=120)
  if [ "$left" -ge 45 ]; then
    STAGE_SIGNAL=INT stage tests_gpu "$left" "$PY" -m pytest -q -m "gpu or triton" -p no:cacheprovider \
      --continue-on-collection-errors $per_test -rfEs --junitxml="$RES/tests_gpu.xml" tests
  else
    note "tests_gpu: skipped, ${left}s left of BUDGET_S=${BUDGET_S}s (run them with STAGES=tests)"; status=1
  fi
else
  note "tests_gpu: pytest is not installed here; skipped (carry a pytest install to run them)"
  status=1
fi
# Opt-in: the engine row with every block recomputed (the recipes' setting before `auto`: what
# `auto` saves), compiled blocks (with STEP_OPTS, as the step stage: e.g. --opt zero.stage=2 for
# whole-block graphs), the data suite, V-JEPA 2's ViT-g cooldown step (384 px x 64 frames, 18,432
# tokens per clip, 6 clips).
want ckpt && stage bench_step_ckpt 100 "$PY" tools/bench.py --device $DEVICE --suite step \
  --step-rows engine --steps 4 --opt model.activation_checkpointing=true $ATTN_OPTS --out "$RES/step_ckpt"
want compile && stage bench_step_compile 120 "$PY" tools/bench.py --device $DEVICE --suite step --batch-size 8 \
  --step-rows engine --steps 6 --opt model.activation_checkpointing=false --opt model.compile=true \
  ${STEP_OPTS:-} $ATTN_OPTS --out "$RES/step_compile"
want data && stage bench_data 50 "$PY" tools/bench.py --device $DEVICE --suite data --out "$RES/data"
want cool384 && stage bench_step_cool384 240 "$PY" tools/bench.py --device $DEVICE --suite step \
  --config vjepa2_vitg_cool384 --batch-size 6 --steps 4 --profile $ATTN_OPTS --out "$RES/step_cool384"

# 4. DALI GPU path (NVDEC): its tests (GPU and CPU mode) and the data suite at full size, whose
#    dali-gpu row says whether any clip fell back to PyAV. DALI is not on the borrowed GPU machines:
#    bring it with tools/dali_wheel_parts.sh (split here, join there) before this stage.
if want dali; then
  if "$PY" -c "import nvidia.dali" 2>/dev/null; then
    stage dali_tests 240 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$RES/dali_tests.xml" \
      tests/gpu/test_dali_gpu.py tests/unit/test_dali_cpu.py
    stage bench_data_dali 150 "$PY" tools/bench.py --device $DEVICE --suite data --out "$RES/data_dali"
  else
    note "dali: nvidia.dali does not import here; skipped (bring the wheel: tools/dali_wheel_parts.sh)"
  fi
fi

# Every stage's rows in one JSON + markdown table (tools/bench.py's format), each row with its stage.
"$PY" - "$RES" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "tools")
from bench import markdown
res = Path(sys.argv[1])
meta, rows = None, []
for f in sorted(res.glob("*/bench_*.json")):
    data = json.loads(f.read_text())
    meta = meta or data["meta"]
    rows += [dict(r, stage=f.parent.name) for r in data["rows"]]
if meta:
    (res / "device_check.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    (res / "device_check.md").write_text(markdown(meta, rows) + "\n")
    print(f"device_check: {len(rows)} rows -> {res / 'device_check.md'}")
EOF

note "done in $(( $(date +%s) - start ))s, status=$status; results in ${OUT:-$RES}"
publish
exit $status
