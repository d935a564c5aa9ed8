#!/usr/bin/env bash
# Issue 14 on a lent GPU (15 minutes of device time a session, start-up included): the default
# world's ShapeWorld table, 3 seeds, with today's teacher (item 1), then the distillation rows
# again with rarity-weighted distillation (`distill_rarity=0.5`, docs/distillation.md section 5):
#   table:  benchmarks/shapeworld.py with the CPU-trained trunks and teacher carried in, the
#           region store built here, all 15 rows trained at once (--jobs), then evaluated;
#   rarity: once the table's rows are trained, the 3 seeds' rows again from the same trunk and
#           store (ViLD-text too: a row records the trunk's path, and the setting does not touch
#           it), trained while the table evaluates.
# One training process keeps an H200 about 15% busy (benchmarks/results/gpu_h200/), so jobs
# were meant to share it. Measured (2026-11-27, H200): 15 jobs ran at 1.3 steps/s each (10.3
# images/s), 19 steps/s together against 12-15 for one process, so the 15 rows did not finish
# in the table's 420 s and nothing came back; the cause (GPU time-slicing between processes or
# the host) was not measured. Do not run it as it is: fewer jobs, or rows one after another. Each stage has its own time limit; shapeworld.py writes after every seed, so a
# stopped stage still returns what it finished (shapeworld_partial.*).
# Inputs beside the tree (name them in the device tool's `carry`): .whl (../shared/tools/gpu-wheels.sh)
# and .gpu/ holding teacher/ (benchmarks/work/teacher with its open_clip_model.safetensors
# gzipped), trunk/ and trunk-all/ (benchmarks/work/shapeworld/trunk{,-all} without resume/).
#   bash benchmarks/gpu_table.sh                          # on the device machine
#   DRY=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_table.sh   # plumbing on the CPU, tiny settings
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
T0=$(date +%s)
if [ -n "${DRY:-}" ]; then
  DEV=cpu; PY=${PY:-.venv/bin/python}; export PYTHONPATH=$PWD/src
  WORLD_ARGS="--num-train 16 --num-val 6"
  SW_ARGS="--trunk-steps 2 --row-steps 2 --val-images 4 --crop-regions 10"
  JOBS=3; THREADS=2; RARITY_JOBS=4
  TEACHER=${TEACHER:-benchmarks/work/teacher-quick}
else
  DEV=cuda; PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  WORLD_ARGS=""; SW_ARGS=""
  JOBS=15; THREADS=15; RARITY_JOBS=12
  # the teacher's weights travel gzipped (the carry limit is 64 MiB)
  TEACHER=/tmp/vild-teacher; rm -rf $TEACHER; mkdir -p $TEACHER; cp .gpu/teacher/*.json $TEACHER/
  gunzip -c .gpu/teacher/open_clip_model.safetensors.gz > $TEACHER/open_clip_model.safetensors || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
source benchmarks/gpu_stage.sh  # stage NAME LIMIT_S COMMAND...

W=/tmp/vild-gpu/world; SW=/tmp/vild-gpu/sw; SWR=/tmp/vild-gpu/sw-rarity
rm -rf /tmp/vild-gpu; mkdir -p "$SW"
# the default world's train and val splits (byte-identical without the web corpus, which only the teacher needs)
stage world 90 $PY -m vild make-world "$W" --num-web 1 --num-web-val 1 --quiet $WORLD_ARGS
[ -z "${DRY:-}" ] && cp -r .gpu/trunk .gpu/trunk-all "$SW/"

stage bf16_test 120 $PY -m pytest -q -p no:cacheprovider -rs -k "cuda and bf16" tests/training/test_numerics.py &
rarity() {  # waits for the table's rows, then trains and evaluates the rarity-weighted ones
  until [ "$(ls "$SW"/seed*/*/model.safetensors 2>/dev/null | wc -l)" -ge 15 ]; do
    sleep 5; [ $(( $(date +%s) - T0 )) -gt "${RARITY_WAIT:-300}" ] && { echo "=== rarity: table rows not ready"; return; }
  done
  mkdir -p "$SWR"; ln -s "$SW/trunk" "$SW/regions" "$SWR/"
  stage rarity $(( ${RARITY_END:-530} - ($(date +%s) - T0) )) $PY benchmarks/shapeworld.py --world "$W" --teacher "${TEACHER:-.gpu/teacher}" \
    --work "$SWR" --seeds 3 --rows text image vild ensemble --row-set distill_rarity=0.5 --jobs $RARITY_JOBS \
    --threads $RARITY_JOBS --device $DEV --no-progress --results "$OUT/rarity" $SW_ARGS
}
rarity &
stage table "${TABLE_LIMIT:-420}" $PY benchmarks/shapeworld.py --world "$W" --teacher "${TEACHER:-.gpu/teacher}" --work "$SW" \
  --seeds 3 --jobs $JOBS --threads $THREADS --device $DEV --no-progress --results "$OUT/table" $SW_ARGS
wait
# seed 0's ViLD-ensemble (the bundled model's row), one file
[ -f "$SW/seed0/ensemble/model.safetensors" ] && tar -C "$SW/seed0" --exclude resume -cf "$OUT/ensemble_seed0.tar" ensemble
for d in "$OUT"/table "$OUT"/rarity; do  # at most 8 files come back: a finished table needs no partial one
  [ -f "$d/shapeworld.json" ] && rm -f "$d"/shapeworld_partial.*
done
echo "=== done at +$(( $(date +%s) - T0 )) s"
ls -lR "$OUT"
