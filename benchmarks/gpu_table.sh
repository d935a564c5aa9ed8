#!/usr/bin/env bash
# Issue 14 on a lent GPU (15 minutes of device time a session, start-up included): the default
# world's ShapeWorld table, 3 seeds, with today's teacher (item 1), and a wider trunk as one
# more row set (item 4, the talk's backbone slide), run side by side:
#   table: benchmarks/shapeworld.py with the CPU-trained trunks and teacher carried in, the
#          region store built here, the 15 rows trained 8 at a time (--jobs), then evaluated;
#   wide:  the same rows (seed 0, no CLIP rows) from a trunk with twice the backbone widths
#          and twice the FPN channels, trained here.
# One training process keeps an H200 about 15% busy (benchmarks/results/gpu_h200/), so jobs
# share it. Each stage has its own time limit; shapeworld.py writes after every seed, so a
# stopped stage still returns what it finished (shapeworld_partial.*).
# Inputs beside the tree (name them in the device tool's `carry`): .whl (../shared/tools/gpu-wheels.sh)
# and .gpu/ holding teacher/, trunk/ and trunk-all/ (copies of benchmarks/work/teacher and
# benchmarks/work/shapeworld/trunk{,-all} without resume/).
#   bash benchmarks/gpu_table.sh                          # on the device machine
#   DRY=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_table.sh   # plumbing on the CPU, tiny settings
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
T0=$(date +%s)
WIDE="tiny_widths=64,128,192,256 fpn_channels=128"
if [ -n "${DRY:-}" ]; then
  DEV=cpu; PY=${PY:-.venv/bin/python}; export PYTHONPATH=$PWD/src
  WORLD_ARGS="--num-train 16 --num-val 6"
  SW_ARGS="--trunk-steps 2 --row-steps 2 --val-images 4 --crop-regions 10"
  JOBS=3; THREADS=2; WIDE_JOBS=2; WIDE_THREADS=1; WIDE="tiny_widths=16,32,48,64 fpn_channels=32"
  TEACHER=${TEACHER:-benchmarks/work/teacher-quick}
else
  DEV=cuda; PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  WORLD_ARGS=""; SW_ARGS=""
  JOBS=8; THREADS=10; WIDE_JOBS=4; WIDE_THREADS=4
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
stage() {  # stage NAME LIMIT_S COMMAND...: run under a time limit, log its wall time and status
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  echo "=== $name: start at +$((start - T0)) s, limit $limit s"
  timeout --kill-after=5 "$limit" "$@"
  echo "=== $name: rc $? after $(( $(date +%s) - start )) s (total +$(( $(date +%s) - T0 )) s)"
}
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

W=/tmp/vild-gpu/world; SW=/tmp/vild-gpu/sw; SWW=/tmp/vild-gpu/sw-wide
rm -rf /tmp/vild-gpu; mkdir -p "$SW"
# the default world's train and val splits (byte-identical without the web corpus, which only the teacher needs)
stage world 90 $PY -m vild make-world "$W" --num-web 1 --num-web-val 1 --quiet $WORLD_ARGS
[ -z "${DRY:-}" ] && cp -r .gpu/trunk .gpu/trunk-all "$SW/"

stage bf16_test 120 $PY -m pytest -q -p no:cacheprovider -rs -k "cuda and bf16" tests/training/test_numerics.py &
stage wide "${WIDE_LIMIT:-500}" $PY benchmarks/shapeworld.py --world "$W" --teacher "${TEACHER:-.gpu/teacher}" --work "$SWW" \
  --seeds 1 --rows text image vild ensemble --model-set $WIDE --jobs $WIDE_JOBS --threads $WIDE_THREADS \
  --device $DEV --no-progress --results "$OUT/wide" $SW_ARGS &
stage table "${TABLE_LIMIT:-480}" $PY benchmarks/shapeworld.py --world "$W" --teacher "${TEACHER:-.gpu/teacher}" --work "$SW" \
  --seeds 3 --jobs $JOBS --threads $THREADS --device $DEV --no-progress --results "$OUT/table" $SW_ARGS
wait
echo "=== done at +$(( $(date +%s) - T0 )) s"
ls -lR "$OUT"
