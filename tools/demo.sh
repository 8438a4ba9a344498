#!/usr/bin/env bash
# Quickstart: set up ./.venv, write a small synthetic video set (H.264 + VP9, decoded on the CPU),
# then pretrain a tiny V-JEPA for a few minutes on CPU with 2 ranks (DeepSpeed ZeRO-3 over gloo),
# ending with a saved checkpoint and a falling loss.
# Usage: bash tools/demo.sh [--opt section.key=value ...]     (OUT=dir to choose the run directory)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(bash tools/setup_env.sh | tail -n 1)
BIN=$(dirname "$PY")
export DS_ACCELERATOR=cpu DS_SKIP_SHM_BUILD=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-runs/cpu_demo_$(date +%Y%m%d_%H%M%S)}
VIDEOS=${VIDEOS:-runs/demo_videos}
if [ ! -f "$VIDEOS/train.txt" ]; then
  "$PY" tools/make_synthetic_videos.py "$VIDEOS" --num-videos 64 --frames 16 --size 64
fi
PORT=${MASTER_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
"$BIN/deepspeed" --num_gpus 2 --master_port "$PORT" tools/train.py --config cpu_demo.yaml \
  --output-dir "$OUT" --resume auto \
  --opt data.backend=cpu --opt "data.datasets=[{path: $VIDEOS/train.txt}]" --opt data.num_workers=1 "$@"
"$PY" - "$OUT" <<'PY'
import sys
from vjepa_scale.train.metrics import read_metrics
run = sys.argv[1]
recs = read_metrics(run)
first, last = recs[0], recs[-1]
print(f"metrics: {run}/metrics.jsonl   tensorboard: tensorboard --logdir {run}/tb")
if not last["loss"] < first["loss"]:
    sys.exit("demo: the loss did not fall")
PY
