#!/usr/bin/env bash
# Every GPU figure of docs/performance.md in one run, for a machine with one CUDA device:
#   bash benchmarks/gpu_all.sh [OUT_DIR]
# 1. `hpsearch run usps --trials 200` on the GPU with the default workers, timed, then
#    `hpsearch finalize usps` on that study (test accuracy, single model and ensemble)
# 2. gpu_packing: trials/min with 1, 2, 4, 8, 16 concurrent trials on the GPU
# 3. epoch_speed on cuda (hpsearch loop vs plain loop vs DataLoader; FLOP/s vs matmul peak)
# 4. groups: trials/min of one fixed shape in trial groups of 1, 4, 8, 16 (8 workers)
# Each step's output goes to OUT_DIR (default: ./gpu-results: text files, finalize.json and
# the study database) and to the terminal; checkpoints and models go to a scratch folder.
# A step that fails is reported and the next one still runs. Environment:
# RUN_TIMEOUT (seconds, passed to `hpsearch run --timeout`; unset = run all 200 trials),
# PACKING_TRIALS (trials per gpu_packing row, default 32).
set -uo pipefail
out="$(realpath -m "${1:-gpu-results}")"
mkdir -p "$out"
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
status=0
step() {  # step NAME COMMAND...: run one step, tee its output, remember a failure
  local name="$1"
  shift
  echo "== $name: $*" | tee "$out/$name.txt"
  local start
  start=$(date +%s)
  "$@" 2>&1 | tee -a "$out/$name.txt"
  local rc=$?
  echo "== $name: exit $rc, $(($(date +%s) - start)) s wall" | tee -a "$out/$name.txt"
  [ "$rc" -eq 0 ] || status=1
}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt" || exit 1
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee -a "$out/device.txt" || true
run_args=(--trials 200 --device cuda --storage "sqlite:///$scratch/usps200.db"
  --artifacts "$scratch/artifacts")
[ -n "${RUN_TIMEOUT:-}" ] && run_args+=(--timeout "$RUN_TIMEOUT")
step usps200 hpsearch run usps "${run_args[@]}"
step finalize hpsearch finalize usps --storage "sqlite:///$scratch/usps200.db" --device cuda \
  --out "$scratch/final-usps"
step studies hpsearch studies --storage "sqlite:///$scratch/usps200.db"
cp "$scratch/final-usps/finalize.json" "$scratch/usps200.db" "$out/" 2>/dev/null || true
step gpu_packing python benchmarks/gpu_packing.py --trials "${PACKING_TRIALS:-32}" --epochs 3
step epoch_speed python benchmarks/epoch_speed.py --device cuda --epochs 3 --repeats 3
step groups python benchmarks/groups.py --workers 8 --sizes 1 4 8 16 --trials 64
rm -rf "$scratch"
exit "$status"
