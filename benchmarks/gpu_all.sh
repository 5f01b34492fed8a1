#!/usr/bin/env bash
# Every GPU figure of the README in one run, for a machine with one CUDA device:
#   bash benchmarks/gpu_all.sh [OUT_DIR]
# 1. epoch_speed on cuda (hpsearch loop vs plain loop vs DataLoader; FLOP/s vs matmul peak)
# 2. gpu_packing: trials/min with 1, 2, 4, 8, 16 concurrent trials on the GPU
# 3. `hpsearch run usps --trials 200` on the GPU with the default workers, timed
# Each step's output goes to OUT_DIR (default: ./gpu-results) and to the terminal.
set -euo pipefail
out="${1:-gpu-results}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee -a "$out/device.txt" || true
python benchmarks/epoch_speed.py --device cuda --epochs 3 --repeats 3 | tee "$out/epoch_speed.txt"
python benchmarks/gpu_packing.py --trials 32 --epochs 3 | tee "$out/gpu_packing.txt"
rm -f "$out/usps200.db"
start=$(date +%s)
hpsearch run usps --trials 200 --device cuda --storage "sqlite:///$out/usps200.db" \
  --checkpoint-dir "$out/checkpoints" 2>&1 | tail -n 40 | tee "$out/usps200.txt"
echo "usps 200 trials on cuda: $(( $(date +%s) - start )) s wall" | tee -a "$out/usps200.txt"
hpsearch finalize usps --storage "sqlite:///$out/usps200.db" --device cuda \
  --out "$out/final-usps" 2>&1 | tee "$out/finalize.txt"
