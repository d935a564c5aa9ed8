# Sourced by the GPU session scripts (benchmarks/gpu_session.sh, benchmarks/gpu_table.sh) after they
# set T0 (the start, in seconds) and PY (the Python to run).
stage() {  # stage NAME LIMIT_S COMMAND...: run under a time limit, log its wall time and status
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  echo "=== $name: start at +$((start - T0)) s, limit $limit s"
  timeout --kill-after=5 "$limit" "$@"
  echo "=== $name: rc $? after $(( $(date +%s) - start )) s (total +$(( $(date +%s) - T0 )) s)"
}
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
