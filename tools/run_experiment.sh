#!/usr/bin/env bash
# Reproduce the documented CPU experiment (docs/EXPERIMENT.md): synthetic direction-of-motion videos,
# V-JEPA pretraining of a small encoder (2 ranks, ZeRO-3, CPU), then attentive probes (3 seeds) on the
# pretrained EMA target encoder and on the same architecture with random weights.
#
#   tools/run_experiment.sh                 # the result (round 4): outputs under runs/experiment_small_square/,
#                                           # JSON, table and loss curve under docs/results/round4/
#   OUT=runs/exp2 RESULTS=/tmp/r tools/run_experiment.sh   # other output folders
#   RECIPE=experiment_motion PATTERN=shapes DATA_ARGS= OUT=runs/experiment_motion \
#     RESULTS=docs/results tools/run_experiment.sh             # round 1: square over a static texture
#   RECIPE=experiment_noisy_square PATTERN=noisy_square DATA_ARGS= OUT=runs/experiment_noisy_square \
#     RESULTS=docs/results/round3 tools/run_experiment.sh      # round 3: 16 px square over per-frame noise
#
# Steps already done are skipped (the data folder exists, the run has its final checkpoint), so a
# killed run can be restarted; pretraining resumes from its latest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/experiment_small_square}
RESULTS=${RESULTS:-docs/results/round4}
RECIPE=${RECIPE:-experiment_small_square}   # pretraining config (configs/RECIPE.yaml)
PATTERN=${PATTERN:-noisy_square}            # make_synthetic_videos.py --pattern
DATA_ARGS=${DATA_ARGS-"--side 8"}           # more make_synthetic_videos.py flags (set empty for none)
NPROC=${NPROC:-2}
export DS_ACCELERATOR=cpu DS_SKIP_SHM_BUILD=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -f .venv/bin/activate ] && . .venv/bin/activate

# 1. data: 640 videos (16 frames, 64x64, H.264 and VP9 alternating), 4 directions, 480 train / 160 val
if [ ! -f "$OUT/data/val.txt" ]; then
  python tools/make_synthetic_videos.py "$OUT/data" --num-videos 640 --frames 16 --size 64 \
    --val-fraction 0.25 --seed 0 --pattern "$PATTERN" $DATA_ARGS
fi

# 2. pretraining (labels unused) on the train split only
ITERS=$(python -c "from vjepa_scale.config import load_config; print(load_config('$RECIPE', validate=False).optim.iterations)")
if [ ! -d "$OUT/pretrain/checkpoints/step_$(printf %08d "$ITERS")" ]; then
  deepspeed --num_gpus "$NPROC" tools/train.py --config "$RECIPE.yaml" \
    --opt "data.datasets=[{path: $OUT/data/train.txt}]" --output-dir "$OUT/pretrain" --resume auto
fi

# 3. probes on the 160 held-out videos, 3 probe seeds each: the pretrained EMA target vs. random
#    init of the same architecture; all 480 labeled train videos, and a label-efficient protocol
#    (32 videos per class, a different balanced subset per seed)
PROBE=(--config probe_motion.yaml "data.train_index=$OUT/data/train.txt" "data.val_index=$OUT/data/val.txt"
       run.seeds=[0,1,2])
for proto in full few32; do
  extra=(); [ "$proto" = few32 ] && extra=(data.train_per_class=32)
  python tools/eval_probe.py "${PROBE[@]}" "${extra[@]}" --checkpoint "$OUT/pretrain" \
    --output "$OUT/probe_${proto}_pretrained"
  python tools/eval_probe.py "${PROBE[@]}" "${extra[@]}" --random-init --checkpoint "$OUT/pretrain" \
    --output "$OUT/probe_${proto}_random"
done

# 4. results (JSON + loss curve) and the comparison table
python tools/experiment_summary.py --pretrain "$OUT/pretrain" --out "$RESULTS" \
  --pair full "$OUT/probe_full_pretrained/result.json" "$OUT/probe_full_random/result.json" \
  --pair few32 "$OUT/probe_few32_pretrained/result.json" "$OUT/probe_few32_random/result.json"
