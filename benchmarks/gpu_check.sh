#!/usr/bin/env bash
# One prepared GPU check, for a machine with CUDA and PyTorch but no network (e.g. the lent device):
#   1. the `gpu`-marked solver tests: every method on CUDA gives the CPU's kept groups and weights;
#   2. the solver benchmark with the problems on the GPU (float64), beside one p×p inverse there.
# Usage (repository root): OUT=gpu_out benchmarks/gpu_check.sh   — logs and the benchmark JSON go to $OUT.
# The LM/vision `gpu` tests also need the offline corpus and Fashion-MNIST: run them with `pytest -m gpu`
# where those are installed (`.ci/run` shows how).
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { echo "editable install failed (see $OUT/install.log)"; exit 1; }
python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
python3 -m pytest tests/test_device.py -m gpu -o addopts= -p no:cacheprovider -q 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m pytest benchmarks -o addopts= -p no:cacheprovider --benchmark-only -s --solver-device cuda \
  --benchmark-json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.log"
