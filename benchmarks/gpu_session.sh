#!/usr/bin/env bash
# Every GPU check of issues 14-16 as one prepared run (a lent GPU machine gives a session 15
# minutes, start-up included), each stage under its own time limit so that a slow stage cannot
# starve the others and what finished still comes back:
#   1. the CUDA tests (`-k cuda`: detector, exemplars, eval --device cuda, training fp32/bf16);
#   2. benchmarks/perf_inference.py --device cuda (issue 16's targets);
#   3. benchmarks/train_throughput.py --device cuda (issue 15: steps/s, GPU utilisation);
#   4. issue 14 on world s7: the region store and the rows trained from the CPU-trained trunk
#      with rarity-weighted distillation (--row-set distill_rarity=R), evaluated on the GPU;
#   5. the same rows with the paper's uniform weights, sharing trunk, store and ViLD-text;
#   between 3 and 4: `vild detect` with each bundled model (the RoI ensemble and the tower
#   ensemble, issue 14's tower rows) on world s7's val images, ms per image in the log.
# Measured on an H200 (benchmarks/results/gpu_h200/README.md): the tests take about 30 s, the
# store 15 s, each 1000-step row 60-75 s (about 15 steps/s) and each evaluation about 5 s, so
# stage 4 needs about 5 minutes; the full perf_inference matrix did not fit in 110 s.
# Inputs beside the tree (name them in the device tool's `carry`): .whl (../shared/tools/gpu-wheels.sh)
# and .gpu/ holding teacher-s7/ and trunk-s7/ (copies of benchmarks/work/teacher-s7 and
# benchmarks/work/sw-s7/trunk without resume/). Results under $OUT (at most 8 files come back).
#   bash benchmarks/gpu_session.sh                   # on the device machine
#   DRY=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_session.sh   # plumbing on the CPU, tiny settings
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
LOG=$OUT/session.log
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)
RARITY=${RARITY:-0.5}
if [ -n "${DRY:-}" ]; then
  DEV=cpu; PY=${PY:-.venv/bin/python}; export PYTHONPATH=$PWD/src
  WORLD_ARGS="--num-train 16 --num-val 6"; SW_ARGS="--row-steps 2 --val-images 4 --crop-regions 10"
  PERF_ARGS="--device cpu --quick"; TP_ARGS="--device cpu --workers 0 1 --steps 14 --skip 4 --rounds 1"
  LIMIT_TESTS=300
else
  DEV=cuda; PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  WORLD_ARGS=""; SW_ARGS=""
  PERF_ARGS="--device cuda --repeats 10"; TP_ARGS="--device cuda --workers 0 4 --steps 160 --skip 30 --rounds 1"
  LIMIT_TESTS=100
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
export PYTHONUNBUFFERED=1
source benchmarks/gpu_stage.sh  # stage NAME LIMIT_S COMMAND...

W=/tmp/vild-gpu/world-s7; SW=/tmp/vild-gpu/sw-s7
rm -rf /tmp/vild-gpu; mkdir -p "$SW"
stage world 60 $PY -m vild make-world "$W" --seed 7 --novel 8 --num-web 1 --num-web-val 1 --quiet $WORLD_ARGS
cp -r .gpu/trunk-s7 "$SW/trunk"

stage cuda_tests $LIMIT_TESTS $PY -m pytest -q -p no:cacheprovider -rs -k cuda \
  tests/inference/test_detector.py tests/inference/test_exemplars.py \
  tests/evaluation/test_eval_matches_detect.py tests/training/test_numerics.py
stage perf_inference 110 $PY benchmarks/perf_inference.py $PERF_ARGS --out "$OUT/perf_inference_$DEV.json"
stage train_throughput 60 $PY benchmarks/train_throughput.py $TP_ARGS --results "$OUT/tp"
cp "$OUT"/tp/train_throughput_*.json "$OUT/" 2>/dev/null; rm -rf "$OUT/tp"

# issue 14: the tower rows' time on the device against the RoI ensemble's (the log keeps the
# ms per image; the detections stay off $OUT)
for model in shapeworld-vild-ensemble shapeworld-vild-tower; do
  stage "detect_$model" 60 $PY -m vild detect --model $model --device $DEV --no-draw --no-progress \
    --out "/tmp/vild-gpu/detect-$model" "$W/val/images"
done

# issue 14: rarity-weighted rows (the store is built here, from the carried trunk's RPN)
ROWS="text image vild ensemble"  # CLIP on crops: the same in both runs, measured on the CPU
stage rarity_rows 230 $PY benchmarks/shapeworld.py --world "$W" --teacher .gpu/teacher-s7 --work "$SW" \
  --seeds 1 --rows $ROWS --device $DEV --no-progress --row-set distill_rarity=$RARITY \
  --results "$OUT/rarity" $SW_ARGS
# the paper's uniform weights on the same trunk, store and ViLD-text row (rarity rows moved aside)
mkdir -p "$SW/seed0-rarity"
for row in image vild ensemble; do [ -d "$SW/seed0/$row" ] && mv "$SW/seed0/$row" "$SW/seed0-rarity/"; done
LEFT=$(( ${BUDGET_S:-560} - ($(date +%s) - T0) ))
if [ "$LEFT" -gt 40 ]; then
  stage uniform_rows "$LEFT" $PY benchmarks/shapeworld.py --world "$W" --teacher .gpu/teacher-s7 \
    --work "$SW" --seeds 1 --rows text image vild ensemble --device $DEV --no-progress \
    --results "$OUT/uniform" $SW_ARGS
fi
echo "=== done at +$(( $(date +%s) - T0 )) s"
ls -lR "$OUT"
