#!/usr/bin/env bash
# The whole GPU benchmark of the training step, in one call on a GPU machine (under 8 minutes):
#   bash benchmarks/gpu.sh            (on the device tool: OUT is its output folder)
# Needs only python3 with a CUDA build of torch, numpy and pillow: no Ray, Optuna or MLflow
# (the packing figure runs trial processes side by side, as Ray places them; Ray's
# placement itself is tested in tests/test_packing.py). Writes train_step_gpu.json,
# train_step_gpu.log and nvidia-smi.txt to $OUT (default: the current folder).
set -euo pipefail
out=${OUT:-.}
export PYTHONUNBUFFERED=1
export FLAIRSEG_CACHE=${FLAIRSEG_CACHE:-/tmp/flairseg-cache}
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    | tee "$out/nvidia-smi.txt"
timeout 460 "$python" -m benchmarks.train_step --device cuda --compile --agreement --packing \
    --json "$out/train_step_gpu.json" 2>&1 | tee "$out/train_step_gpu.log"
